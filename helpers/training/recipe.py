"""The training recipe around the loop: optimizer (AdamW/SGD over the head and backbone groups, layer decay),
the learning-rate schedule (timm's cosine, restarts, warmup), mixup/CutMix, the loss and the weight EMA, each
built from a TrainConfig by `engine.build_run`. `lr_schedule` rebuilds a finished run's schedule for its plots;
`mix_fixed` shows the trainer's own Mixup on one batch at a fixed weight (notebook 04)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.scheduler import CosineLRScheduler, StepLRScheduler
from timm.utils import ModelEmaV3
from torch import nn

from ..base.config import TrainConfig, config_from_dict
from ..base.devices import fused_adamw
from .models import layer_decay_param_groups, param_groups

# ----------------------------------------------------------------------------------------------------------------
# Set-up


def make_scheduler(optimizer: torch.optim.Optimizer, *, kind: str, epochs: int, steps_per_epoch: int,
                   warmup_epochs: float, lr: float, min_lr: float, restart_epochs: int):
    """A timm scheduler stepped once per optimizer update (`step_update(num_updates)`), with linear warmup.

    cosine: one cosine decay over the run; cosine_restart: cycles of `restart_epochs` (default a third of the
    run), each restarting at the peak rate; none: constant after warmup.
    """
    warmup = int(round(warmup_epochs * steps_per_epoch))
    common = dict(warmup_t=warmup, warmup_lr_init=lr * 0.01, t_in_epochs=False)
    if kind == "none":
        return StepLRScheduler(optimizer, decay_t=10**12, decay_rate=1.0, **common)
    if kind == "cosine":
        return CosineLRScheduler(optimizer, t_initial=epochs * steps_per_epoch, lr_min=min_lr, **common)
    cycle = restart_epochs or max(1, epochs // 3)
    return CosineLRScheduler(optimizer, t_initial=cycle * steps_per_epoch, lr_min=min_lr,
                             cycle_limit=math.ceil(epochs / cycle) + 1, **common)


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW or SGD over the head and backbone groups: the backbone at `lr x backbone_lr_ratio`, or with
    `layer_decay` R each backbone layer at `lr x R^(layers above it)`. Each group's `lr_scale` reaches the
    optimizer through the timm scheduler's `step_update`, which sets lr = schedule(initial_lr) x lr_scale."""
    if cfg.layer_decay is not None:
        groups = layer_decay_param_groups(model, lr=cfg.lr, layer_decay=cfg.layer_decay, weight_decay=cfg.weight_decay)
    else:
        groups = param_groups(model, lr=cfg.lr, backbone_lr_ratio=cfg.backbone_lr_ratio, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused_adamw(device))


def hold_backbone(optimizer: torch.optim.Optimizer, held: bool) -> None:
    """Hold the backbone groups still (lr_scale 0: AdamW's decoupled weight decay is scaled by the rate too) or
    give them back their own share of the scheduled rate (`train_scale`: the backbone ratio, or the layer-decay
    scale of their layer). The next `scheduler.step_update` applies it."""
    for group in optimizer.param_groups:
        if group.get("name", "").startswith("backbone"):
            # checkpoints from before train_scale existed carry their last lr_scale only
            group["lr_scale"] = 0.0 if held else group.get("train_scale", group["lr_scale"])


def make_ema(model: nn.Module, decay: float) -> ModelEmaV3:
    """timm's ModelEmaV3 with its decay warmup: at update t the decay is min(decay, 1 - (1 + t)^(-2/3)), so a
    short run's EMA follows the trained weights (0.8 after 10 updates, 0.95 after 100) instead of staying near
    the initial ones, as a fixed 0.998 would for the first ~500 updates."""
    return ModelEmaV3(model, decay=decay, use_warmup=True)


def make_mixup(cfg: TrainConfig, num_classes: int) -> Mixup:
    """timm's batch Mixup/CutMix from the config: with both on, each batch is cutmix with probability
    `mix_switch_prob`, else mixup; `mix_prob` of the batches are mixed at all. Targets come out smoothed and
    mixed (rows sum to one)."""
    return Mixup(mixup_alpha=cfg.mixup_alpha if cfg.mixup else 0.0, cutmix_alpha=cfg.cutmix_alpha if cfg.cutmix else 0.0,
                 prob=cfg.mix_prob, switch_prob=cfg.mix_switch_prob, label_smoothing=cfg.label_smoothing,
                 num_classes=num_classes)


def make_criterion(mixing: bool, label_smoothing: float) -> nn.Module:
    """Soft-target cross-entropy under mixup/cutmix (the mixed targets carry the smoothing), else cross-entropy
    with label smoothing."""
    if mixing:
        return SoftTargetCrossEntropy()
    return LabelSmoothingCrossEntropy(label_smoothing) if label_smoothing > 0 else nn.CrossEntropyLoss()


def lr_schedule(run: str | Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The head's learning rate at every optimizer step of a run, rebuilt with the trainer's own scheduler from
    the settings and the steps per epoch in the run's last.pt.

    Returns:
        (epoch position of each step, from 0 to the epochs run; learning rate), or None when the run lacks the
        files (the caller then plots the per-epoch values of metrics.csv).
    """
    run = Path(run)
    try:
        state = torch.load(run / "last.pt", map_location="cpu", weights_only=True, mmap=True)
        cfg = config_from_dict(state["config"])
        epochs, step = int(state["epoch"]), int(state.get("step") or 0)  # whole epochs, then steps into the next
        done = epochs + (1 if step else 0)
        steps_per_epoch = round((int(state["num_updates"]) - step) / epochs) if epochs else 0
    except (OSError, KeyError, ValueError, RuntimeError, TypeError):
        return None
    if steps_per_epoch <= 0:
        return None
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = make_scheduler(optimizer, kind=cfg.scheduler, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
                               warmup_epochs=cfg.warmup_epochs, lr=cfg.lr, min_lr=cfg.min_lr,
                               restart_epochs=cfg.restart_epochs)
    steps = np.arange(done * steps_per_epoch + 1)
    rates = []
    for step in steps:
        scheduler.step_update(int(step))
        rates.append(optimizer.param_groups[0]["lr"])
    return steps / steps_per_epoch, np.array(rates)


def mix_fixed(cfg: TrainConfig, images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, lam: float,
              cutmix: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The trainer's own Mixup (`make_mixup`) on one batch with its weight fixed instead of drawn: mixup with
    weight `lam` for each image, or CutMix with a box of about 1 - `lam` of the area (the targets use the box's
    real area). Image i is mixed with image N-1-i, as in training; the targets carry the label smoothing.

    Returns:
        (mixed images in [0, 1], (N, 3, H, W); soft targets, (N, classes))
    """
    mixup = make_mixup(cfg, num_classes)
    mixup._params_per_batch = lambda: (float(lam), bool(cutmix))  # timm draws (lam, cutmix) here per batch
    return mixup(images.float() / 255, labels.clone())
