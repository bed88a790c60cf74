"""Where the model looked (issue 24): Grad-CAM maps of a trained run on real photos (the maps follow a photo
pasted on a grey canvas), the failure gallery and explorer with maps, the predict figure's map, a ViT's patch grid
after its prefix tokens, and probe runs (one backbone: maps through it; several: refused). Every test runs under
the MPS check mode (conftest), which watches the maps' forward and backward passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import helpers
from helpers.base.errors import UserError
from helpers.data.splits import load_splits
from helpers.training.models import create_model, data_config
from helpers.training.trained import Trained
from helpers.use import cam
from helpers.use.runs import load_trained

from .conftest import TINY
from .test_features import _small_set


def _one_per_class(split: str = "test") -> list[tuple[str, str]]:
    """The first photo of each class of the tiny set's split: (path, class)."""
    splits = load_splits("food-101", TINY)
    seen: dict[str, str] = {}
    for path, label in getattr(splits, split):
        seen.setdefault(splits.class_names[label], path)
    return [(p, c) for c, p in seen.items()]


@pytest.fixture(scope="module")
def predictions(trained_run, tmp_path_factory):
    """The trained run's test predictions CSV (what the failure gallery reads)."""
    out = tmp_path_factory.mktemp("cam") / "test.csv"
    helpers.evaluate(str(trained_run), dataset="food-101", data_dir=str(TINY), predictions=str(out), num_workers=0,
                     device="cpu")
    return out


def test_maps_of_photos_pasted_on_a_grey_canvas_lie_on_the_photo(trained_run, tmp_path, check_mps):
    """Ten real test photos (one a class) pasted at 112 px in the corners of a 224 px grey canvas that the model
    reads whole: the map of the true class puts far more of its mass on the photo than a uniform map would (the
    box's share of the image, 1/4). scripts/cam_sanity.py prints the table for more photos and canvas sizes."""
    rows, maps, boxes = cam.canvas_check(trained_run, _one_per_class(), tmp_path, canvas=224, whole=True,
                                         device="cpu")
    assert all(r["uniform"] == 0.25 for r in rows) and all(b.shape == (224, 224) for b in boxes)
    inside = np.array([r["inside_true"] for r in rows])
    assert inside.mean() > 2 * 0.25, [round(x, 2) for x in inside]
    assert (inside > 0.25).sum() >= 8, [round(x, 2) for x in inside]
    for m in maps:  # the image the model read, and maps of its size
        assert m.crop.shape == (224, 224, 3) and m.crop.dtype == np.uint8
        assert all(v.shape == (224, 224) and v.dtype == np.float32 and 0 <= v.min() and v.max() <= 1.0 + 1e-6
                   for v in m.maps.values())


def test_the_canvas_is_read_as_any_photo_by_default(trained_run, tmp_path):
    """Without `whole`, the canvas goes through the model's own resize and centre crop (96 px at crop_pct 0.875):
    the photo's box is where that geometry puts it, inside the crop."""
    rows, maps, boxes = cam.canvas_check(trained_run, _one_per_class()[:4], tmp_path, canvas=224, device="cpu")
    assert all(m.crop.shape == (96, 96, 3) for m in maps)
    corners = [(b[:48, :48].mean(), b[:48, 48:].mean(), b[48:, :48].mean(), b[48:, 48:].mean()) for b in boxes]
    assert [int(np.argmax(c)) for c in corners] == [0, 1, 2, 3]  # the corners in turn
    assert all(0.25 < r["uniform"] < 0.35 for r in rows)  # 112 / (224 * 0.875) of the crop's side, squared


def test_maps_for_the_predicted_and_the_true_class_leave_the_weights_alone(trained_run, check_mps):
    trained = load_trained(trained_run)
    before = {k: v.clone() for k, v in trained.model.state_dict().items()}
    photos = _one_per_class()[:4]
    wrong = [trained.class_names[(trained.class_names.index(c) + 1) % 10] for _, c in photos]
    maps = cam.photo_maps(trained, [p for p, _ in photos], classes=[[c, w] for (_, c), w in zip(photos, wrong)])
    table = helpers.predict(trained, [p for p, _ in photos], top_k=1, device="cpu", num_workers=0)
    for m, (_, c), w, row in zip(maps, photos, wrong, table.itertuples()):
        assert m.predicted == row[2] and m.probability == pytest.approx(row.probability, abs=1e-4)  # predict's top-1
        assert list(m.maps)[0] == m.predicted and set(m.maps) == {m.predicted, c, w}
        assert not np.allclose(m.maps[c], m.maps[w])  # two classes, two maps
    assert all(p.requires_grad and p.grad is None for p in trained.model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in trained.model.state_dict().items())


def test_bad_requests_are_named(trained_run):
    photo = _one_per_class()[0][0]
    with pytest.raises(UserError, match="no class pizza"):
        cam.photo_maps(trained_run, [photo], classes=["pizza"], device="cpu")
    with pytest.raises(UserError, match="one model"):
        cam.photo_maps([trained_run, trained_run], [photo], device="cpu")
    with pytest.raises(UserError, match="not a readable photo"):
        cam.photo_maps(trained_run, [TINY / "meta" / "classes.txt"], device="cpu")


def test_the_failure_gallery_shows_the_crop_and_both_maps(trained_run, predictions, tmp_path):
    from helpers.course import failures

    fig = failures.failure_gallery(predictions, n=4, cols=4, run=trained_run, device="cpu", folder=tmp_path,
                                   name="with_maps")
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 12  # three panels a failure
    assert [ax.get_title(loc="left") for ax in shown[1::3] + shown[2::3]] == ["where it looked for"] * 8
    wrong = failures.failures(failures.read_predictions(predictions)[0]).head(4)
    from helpers.data.splits import pretty

    assert [ax.get_xlabel() for ax in shown[1::3]] == [f"{pretty(p, 20)} (predicted)" for p in wrong["pred"]]
    assert [ax.get_xlabel() for ax in shown[2::3]] == [f"{pretty(t, 20)} (true)" for t in wrong["true"]]
    assert [ax.get_title(loc="left") for ax in shown[::3]] == [f"#{i + 1} true: {pretty(t, 20)}"
                                                                for i, t in zip(wrong.index, wrong["true"])]
    crop, looked = shown[0].images[0].get_array(), shown[1].images[0].get_array()
    assert crop.shape == looked.shape == (96, 96, 3) and not np.array_equal(crop, looked)
    assert (tmp_path / "with_maps.png").stat().st_size > 20_000
    plain = failures.failure_gallery(predictions, n=4, cols=4)  # without a run: the photos alone, as before
    assert len([ax for ax in plain.axes if ax.images]) == 4


def test_the_failure_explorer_toggles_the_maps(trained_run, predictions):
    pytest.importorskip("ipywidgets")
    from helpers.course import widgets

    box = widgets.failure_explorer(predictions, run=trained_run, per_page=2, device="cpu")
    controls, picture = box.children[0].children, box.children[1]
    looked = next(c for c in controls if getattr(c, "description", "") == "where it looked")
    plain = picture.value
    assert not looked.disabled and not looked.value
    looked.value = True
    assert picture.value != plain and len(picture.value) > len(plain)
    looked.value = False
    assert picture.value == plain
    without = widgets.failure_explorer(predictions, per_page=2)
    assert next(c for c in without.children[0].children if getattr(c, "description", "") == "where it looked").disabled


def test_the_predict_figure_shows_the_top_class_map(trained_run):
    from helpers.course import predict_figures

    photos = [p for p, _ in _one_per_class()[:2]] + [str(TINY / "meta" / "classes.txt")]  # an unreadable file too
    table = helpers.predict(trained_run, photos, top_k=3, device="cpu", num_workers=0)
    fig = predict_figures.photo_predictions(table, n=3, cols=1, model=trained_run, device="cpu")
    labels = [ax.get_xlabel() for ax in fig.axes if ax.images]
    from helpers.data.splits import pretty

    assert labels == [f"where it looked for {pretty(c, 22)}" for c in table["class"][:2]]


@pytest.mark.parametrize("name, kwargs, prefix", [("vit_tiny_patch16_224", {"reg_tokens": 4}, 5),
                                                  ("eva02_tiny_patch14_224", {}, 1)])
def test_a_vits_tokens_are_laid_on_its_patch_grid_after_its_prefix_tokens(name, kwargs, prefix, check_mps):
    """Random-init ViTs (hub weights cannot be fetched here) at 64 px: a class token and 4 register tokens, or
    EVA-02's class token, dropped; the 16 patch tokens laid on the 4 x 4 grid; maps of the crop's size."""
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=10, img_size=64, **kwargs).eval()
    assert model.num_prefix_tokens == prefix
    module, layer, reshape = cam.target_layer(model)
    assert module is model and layer is model.blocks[-1].norm1
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    handle.remove()
    tokens = seen[0]
    assert tokens.shape[1] == prefix + 16
    grid = reshape(tokens)
    assert grid.shape == (2, tokens.shape[2], 4, 4)
    torch.testing.assert_close(grid[:, :, 1, 2], tokens[:, prefix + 1 * 4 + 2, :])  # row 1, column 2
    trained = Trained(model, [f"class{i}" for i in range(10)], data_config(model, 64), {}, name)
    maps = cam.photo_maps(trained, [p for p, _ in _one_per_class()[:2]], classes=["class3", "class7"])
    assert all(v.shape == (64, 64) and v.dtype == np.float32 for m in maps for v in m.maps.values())


def test_a_cnn_is_read_at_the_feature_map_its_head_pools():
    """lite0 split at its final feature map (after conv_head: 1280 channels, what the head pools) computes the
    model's own logits; a channels-last map (Swin's) is turned channels-first."""
    model = create_model("tf_efficientnet_lite0", 10, image_size=64).eval()
    module, layer, reshape = cam.target_layer(model)
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(module(x), model(x))
        torch.testing.assert_close(seen[0], model.forward_features(x))
    handle.remove()
    assert seen[0].shape == (2, 1280, 2, 2)
    assert reshape(seen[0]) is seen[0] and reshape(seen[0].permute(0, 2, 3, 1)).shape == (2, 1280, 2, 2)


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    """A linear probe on lite0 features (offline ImageNet weights, 64 px, photo and mirror averaged) of a few
    photos a class."""
    from helpers.use.features import extract_features
    from helpers.use.probe import train_probe

    root = tmp_path_factory.mktemp("probe")
    data = _small_set(root / "data")
    extract_features(dataset="food-101", data_dir=str(data), backbone="tf_efficientnet_lite0", pretrained="offline",
                     image_size=64, views=2, output_dir=root / "features", num_workers=0, device="cpu")
    train_probe([root / "features"], root / "run", device="cpu")
    return root / "run"


def test_a_probe_is_explained_through_its_frozen_backbone(probe_run, check_mps):
    """The maps' logits are the probe's own (its mirrored view included): the top-1 and its probability are
    `predict`'s; the backbone stays frozen and gradient-free."""
    photos = [p for p, _ in _one_per_class()[:4]]
    trained = load_trained(probe_run)
    backbone = trained.model.backbones[0]
    backbone.requires_grad_(False)  # as frozen as it gets: the maps need only the input's gradient
    maps = cam.photo_maps(trained, photos, classes=[trained.class_names[0]] * 4)
    table = helpers.predict(trained, photos, top_k=1, device="cpu", num_workers=0)
    assert [m.predicted for m in maps] == list(table["class"])
    assert [m.probability for m in maps] == pytest.approx(list(table["probability"]), abs=1e-4)
    assert all(m.maps[m.predicted].shape == (64, 64) for m in maps)
    assert sum(m.maps[m.predicted].max() > 0 for m in maps) >= 3  # a map whose every cell is negative is all 0
    assert all(not p.requires_grad and p.grad is None for p in backbone.parameters())


def test_a_probe_over_two_backbones_is_refused_naming_why(probe_run):
    from torch import nn

    from helpers.use.runs import ProbeModel

    trained = load_trained(probe_run)
    model = trained.model
    head = nn.Linear(2 * model.head.in_features, model.head.out_features)
    two = ProbeModel([model.backbones[0]] * 2, model.members * 2, model.canvas, head)
    both = Trained(two, trained.class_names, trained.data_config, trained.config, "two")
    with pytest.raises(UserError, match="probe over 2 backbones .* no single map is the probe's"):
        cam.photo_maps(both, [_one_per_class()[0][0]])
    # what 11 asks before drawing its maps (the demo's best run was such a probe, and 11 failed on it)
    assert "probe over 2 backbones" in cam.why_no_map(both)
    assert "ensemble of 2 runs" in cam.why_no_map([probe_run, probe_run])
    assert cam.why_no_map(trained) is None
