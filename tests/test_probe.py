"""`python -m helpers probe`: the L-BFGS probe against scikit-learn on real features, the probe run as a model
(evaluate, ensemble, teacher, --init-from), and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import helpers
from helpers.data.augment import eval_transform
from helpers.data.loaders import ImageDataset
from helpers.data.splits import load_splits
from helpers.training.distill import Teacher
from helpers.training.models import create_model
from helpers.use.features import extract_features
from helpers.use.probe import fit_logreg, load_probe_data
from helpers.use.runs import init_state, load_trained

from .conftest import TINY, run_cli


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    """lite0 features (offline ImageNet weights, 64 px) of every photo of the tiny set."""
    out = tmp_path_factory.mktemp("features") / "lite0"
    extract_features(dataset="food-101", data_dir=str(TINY), backbone="tf_efficientnet_lite0", pretrained="offline",
                     image_size=64, output_dir=out, num_workers=0, device="cpu")
    return out


@pytest.fixture(scope="module")
def probe_run(features, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("probe") / "run"
    done = run_cli("probe", "--features", str(features), "--output-dir", str(out), "--device", "cpu")
    assert done.returncode == 0, done.stderr
    return out, json.loads(done.stdout.strip().splitlines()[-1])


def test_probe_equals_scikit_learn_logistic_regression(features):
    from sklearn.linear_model import LogisticRegression

    data, _, _ = load_probe_data([features])
    (x, y), (xt, yt) = data["train"], data["test"]
    l2 = 1e-3
    w, b = fit_logreg(x, y, 10, l2)
    ours = float(((xt @ w.T + b).argmax(1) == yt).float().mean()) * 100
    sk = LogisticRegression(C=1 / (l2 * len(y)), max_iter=5000, tol=1e-8).fit(x.numpy(), y.numpy())
    theirs = float((sk.predict(xt.numpy()) == yt.numpy()).mean()) * 100
    assert abs(ours - theirs) <= 0.5, (ours, theirs)
    assert ours > 30  # 10 classes: real features, well above chance
    np.testing.assert_allclose(w.numpy(), sk.coef_, atol=0.05 * np.abs(sk.coef_).max())


def test_the_probe_run_is_a_model(probe_run, features, tmp_path):
    run, printed = probe_run
    assert set(printed) == {"top1", "top5", "n"} and printed["n"] == 150
    sweep = (run / "sweep.csv").read_text().splitlines()
    assert len(sweep) >= 9 and sweep[0] == "l2,top1,loss"
    on_photos = helpers.evaluate(str(run), dataset="food-101", data_dir=str(TINY), num_workers=0, device="cpu")
    assert abs(on_photos["top1"] - printed["top1"]) < 100 / 150  # within one photo of the cached-feature number
    both = helpers.ensemble([str(run), str(run)], dataset="food-101", data_dir=str(TINY), num_workers=0, device="cpu")
    assert both["top1"] == pytest.approx(on_photos["top1"])
    trained = load_trained(run)
    teacher = Teacher([trained], trained.data_config)
    # --init-from: the backbone's pretrained weights and the probe's head folded with the mean feature norm m:
    # logits - b are the probe's logits - b scaled by |f| / m for each photo (what the README says), so most,
    # not all, predictions are the probe's.
    model = create_model("tf_efficientnet_lite0", 10)
    weights, class_names = init_state(run, "tf_efficientnet_lite0")
    assert class_names == trained.class_names
    model.load_state_dict(weights)
    model.eval()
    d = trained.data_config
    tf = eval_transform(d["image_size"], d["mean"], d["std"], d["crop_pct"], d["interpolation"])
    dataset = ImageDataset(load_splits("food-101", TINY).test, tf)
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    bias = trained.model.head.bias
    with torch.no_grad():
        probe_logits = trained.model(x)
        folded = model(x)
        norms = model.forward_head(model.forward_features(x), pre_logits=True).norm(dim=1, keepdim=True)
        scale = norms / trained.model.members[0]["mean_norm"]
        torch.testing.assert_close(folded - bias, scale * (probe_logits - bias), rtol=1e-4, atol=1e-4)
        agree = int((folded.argmax(1) == probe_logits.argmax(1)).sum())
        print(f"--init-from: {agree} of {len(x)} argmaxes are the probe's; |f| / m from {float(scale.min()):.2f} "
              f"to {float(scale.max()):.2f}")
        assert len(x) * 0.9 <= agree <= len(x)
        torch.testing.assert_close(teacher(x), probe_logits)
    with pytest.raises(helpers.base.errors.UserError, match="probe on tf_efficientnet_lite0"):
        init_state(run, "tf_efficientnet_lite1")


def _rewrite(folder: Path, split: str, change) -> None:
    """Rewrite one split file's metadata with `change(meta)`."""
    from safetensors import safe_open

    path = folder / f"{split}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
    tensors = load_file(str(path))
    change(meta)
    save_file(tensors, str(path), metadata={"meta": json.dumps(meta)})


@pytest.mark.parametrize("damage, message", [
    ("classes", "other classes"), ("photos", "other photos"), ("split", "val.safetensors is missing")])
def test_bad_features_are_one_paragraph_and_write_nothing(features, tmp_path, damage, message):
    other = tmp_path / "other"
    shutil.copytree(features, other)
    if damage == "classes":
        for split in ("train", "val", "test"):
            _rewrite(other, split, lambda m: m.update(class_names=m["class_names"][::-1]))
    elif damage == "photos":
        _rewrite(other, "test", lambda m: m["paths"].__setitem__(3, "images/apple_pie/0.jpg"))
    else:
        (other / "val.safetensors").unlink()
    out = tmp_path / "run"
    done = run_cli("probe", "--features", str(features), str(other), "--output-dir", str(out), "--device", "cpu")
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not out.exists()


def test_a_probe_over_backbones_of_other_input_sizes_evaluates_exactly(features, tmp_path):
    """lite0 at 64 px and lite1 at 80 px: `evaluate` runs each backbone on its own preprocessing, so the photos
    give the number the probe had on cached features."""
    lite1 = tmp_path / "lite1"
    extract_features(dataset="food-101", data_dir=str(TINY), backbone="tf_efficientnet_lite1", pretrained="offline",
                     image_size=80, output_dir=lite1, num_workers=0, device="cpu")
    out = tmp_path / "both"
    done = run_cli("probe", "--features", str(features), str(lite1), "--output-dir", str(out), "--device", "cpu")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    on_photos = helpers.evaluate(str(out), dataset="food-101", data_dir=str(TINY), num_workers=0, device="cpu")
    assert abs(on_photos["top1"] - printed["top1"]) < 100 / 150, (on_photos, printed)
