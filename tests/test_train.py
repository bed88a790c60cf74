"""The trainer on real photos: it learns, it resumes exactly, and its flags do what they say."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest
import torch

import helpers
from helpers.base.config import TrainConfig, make_config
from helpers.base.errors import UserError
from helpers.commands.cli import build_parser
from helpers.training import checkpoint, engine, recipe

from .conftest import FAST


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_short_run_learns_and_writes_its_outputs(trained_run):
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["test_n"] == 150
    assert summary["test_top1"] >= 50.0, summary  # chance is 10%; lite0 at 96 px after 3 short epochs
    for name in ("config.yaml", "run_info.json", "metrics.csv", "last.pt", "best.pt"):
        assert (trained_run / name).is_file(), name
    rows = _rows(trained_run / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert {"train_loss", "val_top1", "val_top5", "lr", "images_per_s", "epoch_seconds"} <= set(rows[0])
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    info = json.loads((trained_run / "run_info.json").read_text())
    assert info["seed"] == 42 and info["torch"] == torch.__version__ and "timm" in info and "git_commit" in info


def test_a_loaded_run_is_its_checkpoint_and_draws_no_random_numbers(trained_run):
    """Loading a run builds the model with torch's initialisers turned off (`models.skipped_init`): every tensor is
    the checkpoint's, no random number is drawn for this EfficientNet (timm's own initialisers, which ViT and EVA
    call, still draw), and outside the loading a model is initialised as timm makes it."""
    from helpers.training.models import create_model, skipped_init
    from helpers.training.trained import from_state

    state = checkpoint.load(trained_run)
    before = torch.random.get_rng_state()
    trained = from_state(state, str(trained_run))
    assert torch.equal(torch.random.get_rng_state(), before)
    loaded = trained.model.state_dict()
    assert loaded.keys() == state["model"].keys()
    assert all(torch.equal(loaded[k], state["model"][k]) for k in loaded)
    torch.manual_seed(0)
    fresh = create_model("tf_efficientnet_lite0", 10)
    torch.manual_seed(0)
    again = create_model("tf_efficientnet_lite0", 10)
    with skipped_init():
        create_model("tf_efficientnet_lite0", 10)
    torch.manual_seed(0)
    after = create_model("tf_efficientnet_lite0", 10)  # the initialisers are back
    for a, b, c in zip(fresh.parameters(), again.parameters(), after.parameters()):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert float(fresh.conv_stem.weight.std()) > 0.01


def test_evaluate_cli_prints_json_last_and_saves_predictions(trained_run, tmp_path):
    from .conftest import TINY, run_cli

    preds = tmp_path / "preds.csv"
    res = run_cli("evaluate", "--checkpoint", str(trained_run), "--dataset", "food-101", "--data-dir", str(TINY),
                  "--split", "test", "--predictions", str(preds), "--num-workers", "0")
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout.strip().splitlines()[-1])
    summary = json.loads((trained_run / "summary.json").read_text())
    assert result["n"] == 150 and result["top1"] == pytest.approx(summary["test_top1"])
    rows = _rows(preds)
    assert len(rows) == 150 and {"path", "true", "pred", "confidence", "p_apple_pie"} <= set(rows[0])
    assert sum(r["true"] == r["pred"] for r in rows) / 1.5 == pytest.approx(result["top1"])


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, monkeypatch):
    base = dict(FAST, image_size=64, epochs=2, checkpoint_every=3)
    full = helpers.train(TrainConfig(**base, output_dir=str(tmp_path / "full")))

    calls = {"n": 0}
    real_step = engine._optimizer_step

    def crash_on_8th(run):
        calls["n"] += 1
        if calls["n"] == 8:  # mid-epoch 1 (12 steps per epoch), after the step-6 checkpoint
            raise _Interrupt()
        real_step(run)

    monkeypatch.setattr(engine, "_optimizer_step", crash_on_8th)
    with pytest.raises(_Interrupt):
        helpers.train(TrainConfig(**base, output_dir=str(tmp_path / "cut")))
    monkeypatch.setattr(engine, "_optimizer_step", real_step)
    state = checkpoint.load(tmp_path / "cut", prefer=checkpoint.LAST)
    assert (state["epoch"], state["step"]) == (0, 6)

    resumed = helpers.train(TrainConfig(**base, output_dir=str(tmp_path / "cut"), resume=str(tmp_path / "cut")))
    a = checkpoint.load(tmp_path / "full", prefer=checkpoint.LAST)["model"]
    b = checkpoint.load(tmp_path / "cut", prefer=checkpoint.LAST)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    assert resumed["test_top1"] == pytest.approx(full["test_top1"])
    for ra, rb in zip(_rows(tmp_path / "full" / "metrics.csv"), _rows(tmp_path / "cut" / "metrics.csv"), strict=True):
        for k in ("train_loss", "val_loss", "val_top1"):
            assert float(ra[k]) == pytest.approx(float(rb[k]), rel=1e-4), k


def test_every_train_flag_reaches_the_config():
    parser = build_parser()
    samples = {"bool": None, "int": 7, "float": 0.25, "int | None": 128}
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            args = parser.parse_args(["train", flag if not f.default else f"--no-{flag[2:]}"])
            assert getattr(args, f.name) is (not f.default), f.name
        elif f.type in samples:
            args = parser.parse_args(["train", flag, str(samples[f.type])])
            assert getattr(args, f.name) == samples[f.type], f.name
        elif f.type.startswith("tuple"):
            assert parser.parse_args(["train", flag, "a", "b"]).teacher == ["a", "b"]
    args = parser.parse_args(["train", "--scheduler", "cosine_restart", "--backbone", "resnet50"])
    cfg = make_config({k: v for k, v in vars(args).items() if k not in ("command", "func", "config", "verbose")})
    assert (cfg.scheduler, cfg.backbone, cfg.epochs) == ("cosine_restart", "resnet50", TrainConfig.epochs)


def test_yaml_config_sets_defaults_and_flags_override(tmp_path):
    path = tmp_path / "b3.yaml"
    path.write_text("backbone: efficientnet_b3\nimage_size: 300\nbatch_size: 16\n")
    cfg = make_config({"batch_size": 8}, yaml_path=path)
    assert (cfg.backbone, cfg.image_size, cfg.batch_size) == ("efficientnet_b3", 300, 8)
    path.write_text("batchsize: 16\n")
    with pytest.raises(UserError, match="batch_size"):
        make_config(yaml_path=path)


def _lrs(kind, **kw):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    args = dict(kind=kind, epochs=10, steps_per_epoch=10, warmup_epochs=1, lr=1.0, min_lr=0.0, restart_epochs=0) | kw
    sched = recipe.make_scheduler(opt, **args)
    out = []
    for t in range(100):
        sched.step_update(t)
        out.append(opt.param_groups[0]["lr"])
    return out


def test_scheduler_and_warmup_flags_shape_the_learning_rate():
    cosine = _lrs("cosine")
    assert cosine[0] == pytest.approx(0.01) and cosine[5] < cosine[10]  # warmup from lr/100
    assert max(cosine) == pytest.approx(cosine[10], rel=0.05) and cosine[99] < 0.01
    restart = _lrs("cosine_restart")  # cycles of 3 epochs = 30 steps
    assert restart[29] < 0.05 and restart[31] > 0.9
    flat = _lrs("none")
    assert flat[10:] == [1.0] * 90
    no_warmup = _lrs("cosine", warmup_epochs=0)
    assert no_warmup[0] == pytest.approx(1.0)


def test_optimizer_lr_ratio_and_label_smoothing_flags():
    model = helpers.training.models.create_model("tf_efficientnet_lite0", 10, pretrained="none")
    cfg = TrainConfig(lr=1e-2, backbone_lr_ratio=0.1, optimizer="sgd")
    opt = recipe.make_optimizer(model, cfg, torch.device("cpu"))
    assert isinstance(opt, torch.optim.SGD)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["head"] == pytest.approx(1e-2) and lrs["backbone"] == pytest.approx(1e-3)
    assert isinstance(recipe.make_optimizer(model, TrainConfig(), torch.device("cpu")), torch.optim.AdamW)
    logits, target = torch.tensor([[4.0, 0.0, 0.0]]), torch.tensor([0])
    assert recipe.make_criterion(False, 0.3)(logits, target) > recipe.make_criterion(False, 0.0)(logits, target)


def test_early_stopping_stops_on_validation(tmp_path):
    # A frozen backbone at a negligible LR cannot improve val top-1, so patience 1 stops after epoch 2 of 5.
    out = tmp_path / "es"
    summary = helpers.train(TrainConfig(**dict(FAST, image_size=64, lr=1e-9), epochs=5, freeze_backbone=True,
                                        early_stopping=True, patience=1, output_dir=str(out)))
    assert summary["epochs_run"] == 2 and summary["best_epoch"] == 1


def test_grad_accumulation_keeps_the_optimizer_steps(tmp_path):
    out = tmp_path / "acc"
    helpers.train(TrainConfig(**dict(FAST, image_size=64), epochs=1, grad_accum_steps=4, output_dir=str(out)))
    assert checkpoint.load(out, prefer=checkpoint.LAST)["num_updates"] == 12  # ceil(360 / 32), micro-batches of 8


def test_init_from_grows_the_head_and_keeps_old_rows(trained_run, tmp_path, tiny_copy):
    classes = (tiny_copy / "meta/classes.txt").read_text().split()
    # Same 10 classes plus one more, made of copies of another class's photos.
    new = tiny_copy / "images" / "zz_extra"
    new.mkdir()
    ids = []
    for i, src in enumerate(sorted((tiny_copy / "images" / classes[0]).iterdir())[:12]):
        (new / f"{i}.jpg").write_bytes(src.read_bytes())
        ids.append(f"zz_extra/{i}")
    (tiny_copy / "meta/classes.txt").write_text("\n".join(classes + ["zz_extra"]) + "\n")
    with open(tiny_copy / "meta/train.txt", "a") as f:
        f.write("\n".join(ids[:10]) + "\n")
    with open(tiny_copy / "meta/test.txt", "a") as f:
        f.write("\n".join(ids[10:]) + "\n")
    old = checkpoint.load(trained_run)["model"]
    model = helpers.training.models.create_model("tf_efficientnet_lite0", 11)
    grown = helpers.training.models.grow_head(model, old)
    assert grown["classifier.weight"].shape[0] == 11
    torch.testing.assert_close(grown["classifier.weight"][:10], old["classifier.weight"])
    out = tmp_path / "more"
    summary = helpers.train(TrainConfig(**dict(FAST, data_dir=str(tiny_copy), image_size=96, lr=1e-9),
                                        epochs=1, init_from=str(trained_run), freeze_backbone=True, output_dir=str(out)))
    assert summary["test_n"] == 152
    head = checkpoint.load(out)["model"]["classifier.weight"]
    torch.testing.assert_close(head[:10], old["classifier.weight"], atol=1e-5, rtol=0)


def test_download_flag_fetches_with_torchvision(tmp_path, monkeypatch, tiny_copy):
    calls = []

    class FakeFood101:  # stands in for the 5 GB download; lays out what torchvision would
        def __init__(self, root, download=False):
            calls.append(download)
            tiny_copy.rename(tmp_path / "dl" / "food-101")

    import torchvision.datasets

    (tmp_path / "dl").mkdir()
    monkeypatch.setattr(torchvision.datasets, "Food101", FakeFood101)
    with pytest.raises(UserError, match="--download"):
        helpers.data.splits.load_splits("food-101", tmp_path / "dl")
    splits = helpers.data.splits.load_splits("food-101", tmp_path / "dl", download=True)
    assert calls == [True] and len(splits.test) == 150


def test_output_folder_with_another_run_is_refused(trained_run):
    with pytest.raises(UserError, match="already holds another run"):
        helpers.train(TrainConfig(**FAST, epochs=1, output_dir=str(trained_run)))


def test_batch_size_auto_keeps_the_effective_batch_within_a_memory_cap(tmp_path, monkeypatch):
    from helpers.training import batch_size
    from helpers.training.models import create_model

    model = create_model("tf_efficientnet_lite0", 10)
    fits_8 = batch_size.step_peak_bytes(model, 8, 64, "cpu")
    assert batch_size.step_peak_bytes(model, 9, 64, "cpu") > fits_8
    monkeypatch.setattr(batch_size, "default_memory_cap", lambda device: int(fits_8 * 1.01))
    out = tmp_path / "auto"
    helpers.train(TrainConfig(**dict(FAST, image_size=64, batch_size="auto"), auto_batch_target=32, epochs=1,
                              output_dir=str(out)))
    state = checkpoint.load(out, prefer=checkpoint.LAST)
    assert state["batch_plan"] == {"micro_batch": 8, "accum_steps": 4, "effective_batch": 32}
    assert state["num_updates"] == 12  # ceil(360 / 32): the same optimizer steps as batch 32
