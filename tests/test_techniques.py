"""Each technique of the plan does exactly what it claims (issue 3's correctness checks)."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3

import helpers
from helpers.base.config import TrainConfig
from helpers.base.errors import UserError
from helpers.data import augment
from helpers.data.loaders import ImageDataset, make_loader
from helpers.data.splits import load_splits
from helpers.training import checkpoint, distill, evaluation, metrics, recipe
from helpers.training.distill import kd_loss
from helpers.training.models import create_model, data_config
from helpers.use import inference, runs

from .conftest import FAST, TINY


def test_frozen_backbone_is_bit_identical_after_a_stage1_epoch(tmp_path):
    out = tmp_path / "stage1"
    helpers.train(TrainConfig(**dict(FAST, image_size=64), epochs=1, freeze_backbone=True, output_dir=str(out)))
    start = create_model("tf_efficientnet_lite0", 10, pretrained="offline").state_dict()
    trained = checkpoint.load(out, prefer=checkpoint.LAST)["model"]
    for key, tensor in trained.items():
        if key.startswith("classifier"):
            assert not torch.equal(tensor, start[key]), f"the head must learn: {key}"
        else:
            assert torch.equal(tensor, start[key]), f"frozen tensor changed: {key}"  # BN statistics included


def test_backbone_and_head_get_their_own_learning_rates_through_the_schedule():
    model = create_model("tf_efficientnet_lite0", 10)
    opt = recipe.make_optimizer(model, TrainConfig(lr=1e-2, backbone_lr_ratio=0.1), torch.device("cpu"))
    sched = recipe.make_scheduler(opt, kind="cosine", epochs=4, steps_per_epoch=10, warmup_epochs=1, lr=1e-2,
                                  min_lr=0.0, restart_epochs=0)
    head_params = {id(p) for p in model.get_classifier().parameters()}
    for t in (5, 10, 25):
        sched.step_update(t)
        by_part = {}
        for g in opt.param_groups:
            part = "head" if id(g["params"][0]) in head_params else "backbone"
            by_part.setdefault(part, set()).add(round(g["lr"], 12))
        assert len(by_part["head"]) == 1 and len(by_part["backbone"]) == 1
        if t >= 10:  # after warmup the ratio is exact
            assert by_part["backbone"].pop() == pytest.approx(by_part["head"].pop() * 0.1)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_mixup_targets_sum_to_one_and_images_follow_the_formula():
    mix = recipe.make_mixup(TrainConfig(mixup=True, label_smoothing=0.1), num_classes=5)
    x = torch.rand(4, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    mix._params_per_batch = lambda: (0.3, False)  # fix lambda
    mixed, target = mix(x.clone(), y)
    torch.testing.assert_close(mixed, 0.3 * x + 0.7 * x.flip(0))
    torch.testing.assert_close(target.sum(1), torch.ones(4))
    assert target[0, 0] == pytest.approx(0.3 * (0.9 + 0.02) + 0.7 * 0.02)  # smoothed one-hot, off value 0.1/5


def test_cutmix_pastes_a_box_and_mixes_targets_by_its_area():
    mix = recipe.make_mixup(TrainConfig(cutmix=True, label_smoothing=0.0), num_classes=4)
    x = torch.arange(2 * 1 * 10 * 10, dtype=torch.float32).view(2, 1, 10, 10)
    y = torch.tensor([0, 1])
    mix._params_per_batch = lambda: (0.75, True)
    mixed, target = mix(x.clone(), y)
    from_other = (mixed[0] == x[1]).float().mean().item()  # the pasted box comes from the mirrored sample
    assert 0 < from_other < 1
    assert target[0, 0] == pytest.approx(1 - from_other) and target[0, 1] == pytest.approx(from_other)
    torch.testing.assert_close(target.sum(1), torch.ones(2))


def test_tta_with_one_view_equals_plain_evaluation(trained_run):
    trained = runs.load_trained(trained_run)
    samples = load_splits("food-101", TINY).test[:24]
    probs, _ = inference.tta_probs(trained, samples, tta=1, num_workers=0)
    d = trained.data_config
    loader = make_loader(ImageDataset(samples, augment.eval_transform(d["image_size"], d["mean"], d["std"], d["crop_pct"])),
                         batch_size=8, shuffle=False, seed=0, num_workers=0)
    logits, _, _ = evaluation.predict_logits(trained.model, loader, torch.device("cpu"))
    torch.testing.assert_close(probs, logits.softmax(1))
    two, _ = inference.tta_probs(trained, samples, tta=2, num_workers=0)
    assert not torch.allclose(two, probs)  # the mirrored view changes something


def test_ensemble_of_one_is_the_model_and_of_two_the_mean_softmax(trained_run, tmp_path):
    kw = dict(dataset="food-101", data_dir=str(TINY), split="test", num_workers=0, predictions=None)
    single = helpers.evaluate(str(trained_run), **kw)
    one = helpers.ensemble([str(trained_run)], **kw)
    assert one["top1"] == pytest.approx(single["top1"]) and one["members"][0]["top1"] == pytest.approx(single["top1"])
    other = tmp_path / "other"
    helpers.train(TrainConfig(**dict(FAST, image_size=64), epochs=1, seed=7, output_dir=str(other)))
    samples = load_splits("food-101", TINY).test
    pa, labels = inference.tta_probs(runs.load_trained(trained_run), samples, num_workers=0)
    pb, _ = inference.tta_probs(runs.load_trained(other), samples, num_workers=0)
    expected = metrics.metrics_from_probs((pa + pb) / 2, labels)
    two = helpers.ensemble([str(trained_run), str(other)], **kw)
    assert two["top1"] == pytest.approx(expected["top1"]) and two["top5"] == pytest.approx(expected["top5"])
    assert [m["image_size"] for m in two["members"]] == [96, 64]  # each member used its own input size


def test_kd_loss_matches_the_formula_and_only_the_student_gets_gradients():
    torch.manual_seed(0)
    s = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    hard = F.cross_entropy(s, y)
    loss = kd_loss(s, t, hard, alpha=0.7, temperature=3.0)
    p_t = F.softmax(t / 3, dim=1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / 3, dim=1))).sum(1).mean()
    torch.testing.assert_close(loss, 0.7 * 9 * kl + 0.3 * hard)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None
    same = kd_loss(t.detach(), t.detach(), torch.tensor(0.0), alpha=1.0, temperature=2.0)
    assert same.item() == pytest.approx(0.0, abs=1e-6)  # a student equal to its teacher has no soft loss


def test_teacher_converts_the_batch_to_its_own_preprocessing(trained_run):
    student = {"image_size": 64, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    teacher = distill.Teacher(runs.load_teachers([trained_run]), student)
    x = torch.randn(2, 3, 64, 64)
    direct = runs.load_trained(trained_run).model
    t_cfg = teacher.data[0]
    pixels = x * torch.tensor(student["std"]).view(1, 3, 1, 1) + torch.tensor(student["mean"]).view(1, 3, 1, 1)
    expected_in = (pixels - torch.tensor(t_cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(t_cfg["std"]).view(1, 3, 1, 1)
    expected_in = F.interpolate(expected_in, size=(96, 96), mode="bilinear", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), direct(expected_in), rtol=1e-4, atol=1e-4)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_ema_differs_after_training_and_equals_raw_weights_at_decay_zero(tmp_path):
    out = tmp_path / "ema"
    summary = helpers.train(TrainConfig(**dict(FAST, image_size=64), epochs=1, model_ema=True, output_dir=str(out)))
    state = checkpoint.load(out, prefer=checkpoint.LAST)
    differs = [k for k in state["model"] if state["model"][k].is_floating_point()
               and not torch.equal(state["model"][k], state["model_ema"][k])]
    assert differs and "test_ema_top1" in summary
    model = create_model("tf_efficientnet_lite0", 10)
    ema = ModelEmaV3(model, decay=0.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model, step=1)
    for a, b in zip(ema.module.state_dict().values(), model.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_higher_resolution_finetune_and_evaluation(trained_run, tmp_path):
    out = tmp_path / "hires"
    cfg = TrainConfig(**dict(FAST, image_size=128, lr=1e-3), epochs=1, init_from=str(trained_run), resume="auto",
                      output_dir=str(out))
    first = helpers.train(cfg)
    assert checkpoint.load(out)["data_config"]["image_size"] == 128
    rows = (out / "metrics.csv").read_text()
    again = helpers.train(cfg)  # --resume auto finds the finished run and continues it rather than the init weights
    assert (out / "metrics.csv").read_text() == rows and again["test_top1"] == first["test_top1"]
    with pytest.raises(UserError, match="give only one"):
        helpers.train(replace(cfg, resume=str(out)))
    low = helpers.evaluate(str(trained_run), dataset="food-101", data_dir=str(TINY), num_workers=0)
    high = helpers.evaluate(str(trained_run), dataset="food-101", data_dir=str(TINY), image_size=128, num_workers=0)
    assert low["n"] == high["n"] == 150 and low["top1"] != high["top1"]


def test_data_config_follows_the_backbone():
    model = create_model("tf_efficientnet_lite2", 10)
    d = data_config(model)
    assert d["image_size"] == 260 and d["mean"] == (0.5, 0.5, 0.5)
    assert data_config(model, 300)["image_size"] == 300
    assert copy.deepcopy(d) == d


def test_ensemble_test_dir_evaluates_every_image_of_a_class_folder_tree(trained_run, tmp_path, capsys):
    """`ensemble --test-dir DIR` (DIR/<class>/<image>.jpg) gives what --dataset food-101 gives on the same photos."""
    import json
    import shutil

    from helpers.commands.cli import main

    splits = load_splits("food-101", TINY)
    test_dir = tmp_path / "test"
    for path, label in splits.test:
        (test_dir / splits.class_names[label]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, test_dir / splits.class_names[label])
    expected = helpers.ensemble([str(trained_run)], dataset="food-101", data_dir=str(TINY), num_workers=0)
    assert main(["ensemble", "--models", str(trained_run), "--test-dir", str(test_dir), "--num-workers", "0"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == expected["n"] == 150
    assert result["top1"] == pytest.approx(expected["top1"]) and result["top5"] == pytest.approx(expected["top5"])
    assert main(["ensemble", "--models", str(trained_run), "--test-dir", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
