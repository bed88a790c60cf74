"""Layer-wise learning-rate decay through the schedule, the head warmup with it, bad backbones, and the EMA decay
warmup that short fine-tunes rely on."""

from __future__ import annotations

import re

import pytest
import timm
import torch
from timm.utils import ModelEmaV3

from helpers.base.config import TrainConfig
from helpers.base.errors import UserError
from helpers.training import recipe

from .conftest import TINY, run_cli

DEPTH, DECAY, LR = 4, 0.5, 1e-2


def _block_of(model: torch.nn.Module) -> dict[int, int | str]:
    """id(parameter) -> its transformer block index, or "head"."""
    out: dict[int, int | str] = {id(p): "head" for p in model.get_classifier().parameters()}
    for name, p in model.named_parameters():
        m = re.match(r"blocks\.(\d+)\.", name)
        if m:
            out[id(p)] = int(m.group(1))
    return out


def test_layer_decay_rates_reach_the_optimizer_through_the_schedule():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=DEPTH, img_size=32, num_classes=5)
    opt = recipe.make_optimizer(model, TrainConfig(lr=LR, layer_decay=DECAY, optimizer="sgd"), torch.device("cpu"))
    sched = recipe.make_scheduler(opt, kind="cosine", epochs=10, steps_per_epoch=10, warmup_epochs=1, lr=LR,
                                  min_lr=0.0, restart_epochs=0)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    block_of = _block_of(model)
    recipe.hold_backbone(opt, True)  # the head warmup: only the head moves
    sched.step_update(5)
    for g in opt.param_groups:
        part = block_of.get(id(g["params"][0]))
        assert g["lr"] > 0 if part == "head" else g["lr"] == 0.0, g["name"]
    recipe.hold_backbone(opt, False)
    sched.step_update(30)
    scheduled = next(g["lr"] for g in opt.param_groups if block_of.get(id(g["params"][0])) == "head")
    assert 0 < scheduled < LR  # cosine-decayed after the warmup
    seen = set()
    for g in opt.param_groups:
        for p in g["params"]:
            block = block_of.get(id(p))
            if isinstance(block, int):
                assert g["lr"] == pytest.approx(scheduled * DECAY ** (DEPTH - block)), (g["name"], block)
                seen.add(block)
    assert seen == set(range(DEPTH))


def test_layer_decay_on_a_backbone_timm_cannot_group_is_exit_2_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    common = ["train", "--data-dir", str(TINY), "--pretrained", "none", "--epochs", "1", "--num-workers", "0",
              "--output-dir", str(out)]
    done = run_cli(*common, "--backbone", "pit_ti_224", "--layer-decay", "0.75")  # PiT: no group_matcher
    assert done.returncode == 2 and "cannot group" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not out.exists()
    done = run_cli(*common, "--backbone", "tf_efficientnet_lite0", "--layer-decay", "1.5")
    assert done.returncode == 2 and "--layer-decay must be in (0, 1]" in done.stderr
    assert not out.exists()


def test_ema_decay_warmup_follows_a_short_run():
    """20 updates that move a weight from 0 to 1: the engine's EMA (decay 0.998 with timm's warmup) follows;
    a fixed 0.998 stays near its first copy (0.05)."""
    model = torch.nn.Linear(2, 2, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema, fixed = recipe.make_ema(model, 0.998), ModelEmaV3(model, decay=0.998)
    for step in range(1, 21):
        with torch.no_grad():
            model.weight.fill_(step / 20)
        ema.update(model, step=step)
        fixed.update(model, step=step)
    assert float(ema.module.weight.mean()) > 0.7
    assert float(fixed.module.weight.mean()) < 0.1  # the first update copies (decay 0), then 0.998


def test_pretrained_file_of_a_timm_model_goes_through_timms_loader_and_adapts_the_head(tmp_path):
    """--pretrained PATH with a plain weights file of the named model (1000 ImageNet classes) for 10 classes: the
    body loads, the classifier is a fresh 10-class one."""
    from safetensors.torch import save_file

    from helpers.training.models import create_model

    source = create_model("tf_efficientnet_lite0", 1000, pretrained="offline")
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = create_model("tf_efficientnet_lite0", 10, pretrained=str(path))
    assert model.get_classifier().out_features == 10
    torch.testing.assert_close(model.conv_stem.weight, source.conv_stem.weight)
    with pytest.raises(UserError, match="not a weights file of resnet18"):
        create_model("resnet18", 10, pretrained=str(path))
