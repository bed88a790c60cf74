"""The training loop: `fit(config)` builds everything from a TrainConfig, then trains epoch by epoch.

    from helpers import TrainConfig, train
    summary = train(TrainConfig(dataset="food-101", data_dir="data/food-101-tiny", backbone="tf_efficientnet_lite0",
                                pretrained="offline", epochs=3, image_size=160, output_dir="runs/demo"))

Read `train_one_epoch` for the step; `fit` for set-up, validation, early stopping, checkpoints and the test.
A run can stop anywhere (even mid-epoch, even mid-write) and continue with `resume=<run dir>` to the same
weights it would have had: every step reseeds its random generators from (seed, epoch, step), every sample's
augmentation is seeded from (seed, epoch, index), and `last.pt` is written atomically every
`checkpoint_every` steps and at each epoch end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.scheduler import CosineLRScheduler, StepLRScheduler
from timm.utils import ModelEmaV3
from torch import nn

from . import augment, checkpoint, distributed
from .config import TrainConfig, UserError, config_from_dict, save_config, validate
from .data import ImageDataset, Splits, index_seed, load_splits, make_loader
from .inference import check_classes
from .io import atomic_write_text
from .lock import locked_output
from .losses import kd_loss
from .metrics import Sums, append_row, read_rows, topk_correct, truncate_rows
from .models import (
    create_model,
    data_config,
    freeze_backbone,
    grow_head,
    layer_decay_param_groups,
    param_groups,
    set_train_mode,
)
from .mps_check import device_code
from .progress import progress_bar
from .runs import init_state, load_trained
from .utils import (
    amp_dtype,
    autocast,
    channels_last_for,
    compile_for,
    fused_adamw,
    get_device,
    peak_memory_mb,
    predict_logits,
    reset_peak_memory,
    run_info,
    seed_everything,
    to_device,
    to_model_input,
)

_logger = logging.getLogger(__name__)

# Settings that may change between a run and its resumption without changing what is computed.
RUNTIME_FIELDS = {"resume", "output_dir", "device", "num_workers", "log_interval", "checkpoint_every", "compile",
                  "download", "data_dir", "strict_data", "channels_last"}


class NonFiniteLossError(UserError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


@dataclass
class Run:
    """The live objects of a training run that `train_one_epoch` works with."""

    model: nn.Module  # possibly DistributedDataParallel-wrapped or compiled
    raw_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    criterion: Callable
    device: torch.device
    seed: int
    accum_steps: int
    steps_per_epoch: int
    micro_per_epoch: int  # loader batches in a whole epoch
    memory_format: torch.memory_format = torch.channels_last
    amp: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    mixup: Mixup | None = None
    teacher: nn.Module | None = None
    kd_alpha: float = 0.7
    kd_temperature: float = 3.0
    ema: ModelEmaV3 | None = None
    frozen_backbone: bool = False  # keep the backbone's BatchNorm layers in eval mode
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None  # uint8 batches -> model input, on the device
    clip_grad: float = 0.0
    nan_policy: str = "stop"
    log_interval: int = 20
    num_updates: int = 0
    bad_indices: set[int] = field(default_factory=set)


def _reseed(seed: int, epoch: int, step: int) -> None:
    """Make a step's randomness (mixup, dropout, stochastic depth) depend only on (seed, epoch, step)."""
    s = index_seed(seed, epoch, 1_000_000_000 + step)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


@device_code
def train_one_epoch(run: Run, loader, epoch: int, *, start_step: int = 0, sums: Sums | None = None,
                    save_fn: Callable[[int, int, Sums], None] | None = None, save_every: int = 0) -> dict:
    """Train one epoch from optimizer step `start_step`; returns loss/top1/top5 (sample-weighted) and images/s.

    The running sums stay on the device; they are copied into `sums` (a host sync, like `.item()`) only at the
    log interval, before a mid-epoch save and at the end of the epoch.
    """
    set_train_mode(run.raw_model, run.frozen_backbone)
    sums = sums or Sums()
    seen_before = sums.n
    totals = DeviceTotals(sums, run.device)
    batches = iter(loader)
    bar = progress_bar(total=run.steps_per_epoch, initial=start_step, desc=f"epoch {epoch + 1}", leave=False,
                       disable=not distributed.is_main())
    started = time.perf_counter()
    for step in range(start_step, run.steps_per_epoch):
        train_step(run, batches, epoch, step, totals)
        bar.update(1)
        if (step + 1) % run.log_interval == 0 or step + 1 == run.steps_per_epoch:
            sums.load(totals.state())
            bar.set_postfix(loss=f"{sums.result()['loss']:.3f}", lr=f"{_head_lr(run.optimizer):.2e}")
        if save_fn and save_every and (step + 1) % save_every == 0 and step + 1 < run.steps_per_epoch:
            sums.load(totals.state())
            save_fn(epoch, step + 1, sums)
    bar.close()
    sums.load(totals.state())
    elapsed = time.perf_counter() - started
    total = Sums()  # every rank's samples: under DDP each rank saw only its shard of the batches
    total.load(distributed.all_sum(sums.state(), run.device))
    seen = distributed.all_sum([sums.n - seen_before], run.device)[0]
    return {**total.result(), "images_per_s": seen / max(elapsed, 1e-9), "seconds": elapsed}


def train_step(run: Run, batches, epoch: int, step: int, totals: DeviceTotals) -> None:
    """One optimizer step: forward and backward over `accum_steps` micro-batches from `batches` (fewer for the
    epoch's last partial step), then the update. Adds (n, loss x n, top-1 hits, top-5 hits) to `totals` on the
    device. A non-finite loss stops the run, or skips the step with `nan_policy="skip"`."""
    _reseed(run.seed, epoch, step)
    n_micro = min(run.accum_steps, run.micro_per_epoch - step * run.accum_steps)
    run.optimizer.zero_grad(set_to_none=True)
    for micro in range(n_micro):
        images, labels, _, bad = next(batches)
        run.bad_indices.update(i for i in bad.tolist() if i >= 0)
        images = to_model_input(images, run.device, run.normalize, run.memory_format)
        labels = to_device(labels, run.device)
        targets = labels
        if run.mixup is not None:
            images, labels = _even(images), _even(labels)  # timm's Mixup pairs the batch with its mirror
            images, targets = run.mixup(images, labels)
        last = micro == n_micro - 1
        with run.model.no_sync() if (not last and hasattr(run.model, "no_sync")) else contextlib.nullcontext():
            logits, loss = _forward(run, images, targets)
            if not _finite(run, loss, epoch, step):
                for _ in range(n_micro - micro - 1):  # keep the loader aligned with the step count
                    next(batches)
                return
            scaled = loss / run.accum_steps
            (run.scaler.scale(scaled) if run.scaler else scaled).backward()
        totals.add(logits.detach(), labels, loss.detach())
    _optimizer_step(run)


def _forward(run: Run, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, loss) under the run's autocast; with a teacher the loss is the distillation loss."""
    with autocast(run.device, run.amp):
        logits = run.model(images)
        loss = run.criterion(logits, targets)
        if run.teacher is not None:
            with torch.no_grad():
                teacher_logits = run.teacher(images)
            loss = kd_loss(logits, teacher_logits, loss, alpha=run.kd_alpha, temperature=run.kd_temperature)
    return logits, loss


def _finite(run: Run, loss: torch.Tensor, epoch: int, step: int) -> bool:
    """Whether the loss is finite; a NaN must never reach the weights, so this is the one host sync per
    micro-batch. Under DDP every rank takes the same branch (one rank skipping the backward that the others
    run would hang the all-reduce)."""
    if distributed.all_true(torch.isfinite(loss), run.device):
        return True
    if run.nan_policy == "stop":
        raise NonFiniteLossError(
            f"The loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}. The last good "
            "checkpoint is kept. Lower --lr, turn off --amp, or use --nan-policy skip.")
    _logger.warning("Skipping step %d of epoch %d: loss is %s", step + 1, epoch + 1, loss.item())
    run.optimizer.zero_grad(set_to_none=True)
    return False


class DeviceTotals:
    """An epoch's running (n, top-1 hits, top-5 hits) as int64 and loss x n as float32, kept on the device (no
    host sync per batch; MPS has no float64). `state()` reads them into `Sums.state()` order (a host sync)."""

    def __init__(self, sums: Sums, device: torch.device):
        self.counts = torch.tensor([sums.n, sums.top1, sums.top5], dtype=torch.int64, device=device)
        self.loss = torch.tensor(sums.loss, dtype=torch.float32, device=device)

    def add(self, logits: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor) -> None:
        """Add one batch; the same counts as `metrics.topk_correct`."""
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(labels.unsqueeze(1))
        self.counts += torch.stack((hits.new_tensor(len(labels), dtype=torch.int64), hits[:, 0].sum(),
                                    hits.any(dim=1).sum()))
        self.loss += loss.float() * len(labels)

    def state(self) -> list[float]:
        n, top1, top5 = self.counts.tolist()
        return [n, self.loss.item(), top1, top5]


def _optimizer_step(run: Run) -> None:
    if run.clip_grad > 0:
        if run.scaler:
            run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.raw_model.parameters(), run.clip_grad)
    if run.scaler:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.num_updates += 1
    run.scheduler.step_update(run.num_updates)
    if run.ema is not None:
        run.ema.update(run.raw_model, step=run.num_updates)


def _even(t: torch.Tensor) -> torch.Tensor:
    return t[: len(t) - len(t) % 2]


def _head_lr(optimizer: torch.optim.Optimizer) -> float:
    return max(g["lr"] for g in optimizer.param_groups)


@device_code
@torch.no_grad()
def validate_model(model: nn.Module, loader, device: torch.device, dtype: torch.dtype | None = None, *,
                   reduce: bool = True, bad: set[int] | None = None, normalize: Callable | None = None) -> dict:
    """Cross-entropy, top-1 and top-5 on a loader, summed over all processes (`reduce=False`: this process
    only). Dataset indices of unreadable images (replaced by the next readable one) are added to `bad`."""
    logits, labels, _ = predict_logits(model, _recording(loader, bad if bad is not None else set()), device, dtype,
                                       normalize=normalize)
    loss_sum = float(F.cross_entropy(logits, labels, reduction="sum"))
    top1, top5 = topk_correct(logits, labels)
    if reduce:
        n, loss_sum, top1, top5 = distributed.all_sum([len(labels), loss_sum, top1, top5], device)
    else:
        n = len(labels)
    n = max(n, 1)
    return {"loss": loss_sum / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "n": int(n)}


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


class Teacher(nn.Module):
    """One or more trained models as a distillation teacher. Each member gets the student's batch converted
    to its own normalisation and input size; several members return the log of their mean softmax.
    """

    def __init__(self, paths: tuple[str, ...], student_data: dict, device: torch.device,
                 class_names: list[str] | None = None):
        super().__init__()
        members = [load_trained(p, device=device) for p in paths]
        self.columns = [check_classes(m, class_names, "the training data", use="used as a teacher")  # each member,
                        if class_names is not None else None for m in members]  # its outputs in the student's order
        self.models = nn.ModuleList(m.model for m in members)
        self.data = [m.data_config for m in members]
        self.student = student_data
        self.class_names = members[0].class_names
        for p in self.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):
        return super().train(False)  # a teacher always predicts in eval mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = []
        for model, d, columns in zip(self.models, self.data, self.columns):
            xi = _convert_batch(x, self.student, d)
            logits = model(xi).float()
            logits = logits if columns is None else logits[:, columns.to(logits.device)]
            if len(self.models) == 1:
                return logits
            probs.append(logits.softmax(dim=1))
        return torch.stack(probs).mean(0).clamp_min(1e-8).log()


def _convert_batch(x: torch.Tensor, src: dict, dst: dict) -> torch.Tensor:
    if tuple(src["mean"]) != tuple(dst["mean"]) or tuple(src["std"]) != tuple(dst["std"]):
        s_mean, s_std, d_mean, d_std = (torch.tensor(v, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
                                        for v in (src["mean"], src["std"], dst["mean"], dst["std"]))
        x = (x * s_std + s_mean - d_mean) / d_std
    if x.shape[-1] != dst["image_size"]:
        x = F.interpolate(x, size=(dst["image_size"], dst["image_size"]), mode="bilinear", align_corners=False)
    return x


def sample_batch(cfg: TrainConfig, n: int = 8, *, train: bool = True,
                 one_per_class: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """One batch of `cfg`'s data as the trainer's loader gives it (its train or eval pipeline, before the
    on-device normalisation), for showing a technique on real photos.

    Args:
        train: the train split through the training pipeline (random augmentation); False: the test split through
            the evaluation pipeline (resize and centre crop only).
        one_per_class: the first photo of each of the first `n` classes, in class order (a batch of n classes).

    Returns:
        (uint8 images (n, 3, S, S), labels (n,), the dataset's class names)
    """
    splits = load_splits(cfg.dataset, cfg.data_dir, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                         seed=cfg.seed)
    if one_per_class:
        items = splits.train if train else splits.test
        first = {}
        for path, label in items:
            first.setdefault(label, (path, label))
        splits = dataclasses.replace(splits, **{"train" if train else "test": [first[k] for k in sorted(first)][:n]})
        train_shuffle = False
    else:
        train_shuffle = train
    size = cfg.image_size or 224
    unit = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # uint8 pipelines leave normalisation to the device
    transform = (augment.train_transform(cfg.augment, size, *unit, uint8=True) if train
                 else augment.eval_transform(size, *unit, uint8=True))
    loader = make_loader(ImageDataset(splits.train if train else splits.test, transform), batch_size=n,
                         shuffle=train_shuffle, seed=cfg.seed, num_workers=0)
    images, labels, _, _ = next(iter(loader))
    return images, labels, splits.class_names


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


@device_code
def distillation_terms(cfg: TrainConfig, student: str | Path, n: int = 16) -> dict[str, float]:
    """The distillation loss's two terms on one training batch of `cfg`'s data, for a trained `student` run,
    with the trainer's own pieces: `Teacher` (each member at its own size and normalisation), the criterion and
    `kd_loss` (without mixing, so the labels are the photos' own).

    Returns:
        {"hard: CE on the labels", "soft: T^2 KL(teacher || student)", "loss = a soft + (1 - a) hard"}
    """
    device = get_device(cfg.device)
    trained = load_trained(student, device=device)
    images, labels, _ = sample_batch(cfg, n)
    normalize = augment.DeviceNormalize(trained.data_config["mean"], trained.data_config["std"])
    x = to_model_input(images, device, normalize, torch.contiguous_format)
    teacher = Teacher(cfg.teacher, trained.data_config, device)
    with torch.no_grad():
        logits, teacher_logits = trained.model(x), teacher(x)
        hard = make_criterion(False, cfg.label_smoothing)(logits, labels.to(device))
        soft = kd_loss(logits, teacher_logits, hard, alpha=1.0, temperature=cfg.kd_temperature)
        total = kd_loss(logits, teacher_logits, hard, alpha=cfg.kd_alpha, temperature=cfg.kd_temperature)
    return {"hard: CE on the labels": float(hard), "soft: T^2 KL(teacher || student)": float(soft),
            f"loss = {cfg.kd_alpha:g} soft + {1 - cfg.kd_alpha:g} hard": float(total)}


def _same_run(saved: TrainConfig, cfg: TrainConfig) -> bool:
    a, b = dataclasses.asdict(saved), dataclasses.asdict(cfg)
    return all(a[k] == b[k] for k in a if k not in RUNTIME_FIELDS)


def _same_run_started(out: Path, cfg: TrainConfig) -> bool:
    """Whether the config.yaml in `out` is that of `cfg`'s run (a run that stopped before its first checkpoint)."""
    try:
        saved = config_from_dict(yaml.safe_load((out / "config.yaml").read_text()) or {})
    except Exception:  # a torn or foreign config.yaml is not this run's
        return False
    return _same_run(saved, cfg)


def _prepare_output(cfg: TrainConfig) -> tuple[TrainConfig, dict | None, bool]:
    """Check the output folder and load the resume checkpoint, before any work starts.

    Returns:
        (config, resume state or None, continuing): `continuing` is an exact continuation of the same run;
        a resume checkpoint with other training settings starts a new stage from its weights.
    """
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output-dir {out} is a file. Give a folder (it is created when missing).")
    resume = cfg.resume
    if resume == "auto" or (resume is not None and Path(resume).is_dir() and Path(resume).resolve() == out.resolve()):
        resume = str(out) if any((out / n).is_file() for n in (checkpoint.LAST, checkpoint.PREVIOUS)) else None
    if resume is None:
        if (out / checkpoint.LAST).exists() or (out / "config.yaml").exists():
            no_weights = not any((out / n).exists() for n in (checkpoint.LAST, checkpoint.PREVIOUS, checkpoint.BEST))
            if cfg.resume is not None and _same_run_started(out, cfg):
                pass
            elif no_weights and cfg.resume == "auto":  # e.g. a NaN at step 2: nothing to keep, start over as asked
                _logger.warning("%s holds a run that stopped before its first checkpoint, with other settings: "
                                "starting over with these settings", out)
            elif no_weights:
                raise UserError(
                    f"{out} holds a run that stopped before its first checkpoint. Add --resume auto to start it over "
                    "(with these settings), or choose another --output-dir."
                )
            else:
                raise UserError(
                    f"{out} already holds another run. Continue it with --resume {out} and its settings, or choose "
                    "another --output-dir."
                )
            if distributed.is_main():  # killed before its first checkpoint: start over, without that try's rows
                (out / "metrics.csv").unlink(missing_ok=True)
        if cfg.resume is not None:
            _logger.info("No checkpoint of this run in %s yet: starting it from the beginning", out)
        return dataclasses.replace(cfg, resume=None), None, False
    state, state_file = checkpoint.load_resume(resume)  # a damaged last.pt goes back to last.prev.pt (warning)
    if state_file.parent.resolve() == out.resolve():
        checkpoint.check_best(state, out)
    saved = config_from_dict(state["config"])
    if saved.backbone != cfg.backbone:
        raise UserError(
            f"--resume {resume} is a {saved.backbone} checkpoint, but --backbone is {cfg.backbone}. "
            f"Resume with --backbone {saved.backbone}, or start a new run from its weights with another backbone."
        )
    continuing = _same_run(saved, cfg)
    if continuing and "optimizer" not in state:
        raise UserError(
            f"--resume {resume} holds the best weights only, not the training state that continuing needs. Give "
            "the run folder or its last.pt, or start a new run from these weights with --init-from."
        )
    source_dir = checkpoint.resolve(resume, checkpoint.LAST).parent.resolve()
    if continuing and (source_dir / "metrics.csv").is_file():
        read_rows(source_dir / "metrics.csv")  # a damaged log stops here, before any file is written
    if not continuing and source_dir == out.resolve():
        changed = [k for k, v in dataclasses.asdict(cfg).items()
                   if k not in RUNTIME_FIELDS and dataclasses.asdict(saved)[k] != v]
        raise UserError(
            f"The run in {out} was trained with other settings ({', '.join(changed)} differ). To continue it, "
            "repeat its settings; to start a new stage from its weights, give another --output-dir."
        )
    return dataclasses.replace(cfg, resume=resume), state, continuing


def _batch_plan(cfg: TrainConfig, model: nn.Module, image_size: int, device: torch.device, dtype, world: int,
                state: dict | None) -> tuple[int, int, int]:
    """(micro-batch per process, accumulation steps, images per optimizer step). With --batch-size auto the
    largest micro-batch that fits is measured (helpers.batch_size) and accumulation keeps --auto-batch-target;
    a continued run reuses its recorded plan so that it resumes exactly."""
    if cfg.batch_size != "auto":
        return cfg.batch_size // (cfg.grad_accum_steps * world), cfg.grad_accum_steps, cfg.batch_size
    if state is not None and state.get("batch_plan"):
        p = state["batch_plan"]
        return p["micro_batch"], p["accum_steps"], p["effective_batch"]
    from .batch_size import auto_batch, plan_accumulation

    plan = auto_batch(model, image_size, device, effective_batch=cfg.auto_batch_target, world_size=world,
                      channels_last=channels_last_for(device, cfg.channels_last), amp_dtype=dtype)
    if world > 1:  # every process needs the same micro-batch
        micro = min(distributed.all_gather_object(plan.micro_batch))
        plan = plan_accumulation(cfg.auto_batch_target or micro * world, micro, world)
    _logger.info("--batch-size auto: micro-batch %d x %d accumulation steps x %d processes = %d images per step",
                 plan.micro_batch, plan.accum_steps, world, plan.effective_batch)
    return plan.micro_batch, plan.accum_steps, plan.effective_batch


@dataclass
class Data:
    """A run's data: the splits, the loaders and the batch plan (micro-batch x accumulation x processes)."""

    splits: Splits
    data_config: dict  # the model's input size, mean, std, crop_pct, interpolation
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    eval_transform: Callable
    normalize: Callable[[torch.Tensor], torch.Tensor]  # uint8 batches -> model input, on the device
    micro_batch: int
    accum_steps: int
    batch_size: int  # images per optimizer step over all processes


@dataclass
class Progress:
    """Where training stands: the next epoch and step, the best validation so far, the saved running sums."""

    epoch: int = 0
    step: int = 0
    best: dict = field(default_factory=lambda: {"top1": -1.0, "epoch": 0, "since": 0})
    sums_state: list[float] | None = None
    finished: bool = False


@locked_output  # one run per output folder: a second one stops with exit 2 naming this one
def fit(cfg: TrainConfig) -> dict:
    """Train, validate every epoch, early-stop on validation, test the best weights once. Returns the summary
    that is also written to `output_dir/summary.json`.
    """
    cfg = validate(cfg)
    dist_info = distributed.setup(cfg.device)
    device = get_device(cfg.device, dist_info.local_rank)
    cfg, state, continuing = _prepare_output(cfg)
    distributed.barrier()  # every rank has checked the output folder before rank 0 writes into it
    splits = _load_splits(cfg, state if continuing else None, dist_info)
    seed_everything(cfg.seed)
    model, dtype = build_model(cfg, splits.class_names, state, device)
    data = build_data(cfg, splits, model, device, dtype, dist_info, state if continuing else None)
    run = build_run(cfg, model, data, device, dtype, dist_info)
    progress = restore(run, state, continuing, cfg.resume)
    out = _start_output(cfg, device, dist_info, progress.epoch if continuing else None)
    _logger.info("Training %s on %d images (%d val, %d test), %d classes, %s, batch %d, %d steps/epoch",
                 cfg.backbone, len(splits.train), len(splits.val), len(splits.test), len(splits.class_names), device,
                 data.batch_size, run.steps_per_epoch)
    started = time.perf_counter()
    train_epochs(cfg, run, data, progress, out, dist_info)
    distributed.barrier()
    summary = _final_test(cfg, out, splits, data.eval_transform, data.normalize, device, dtype, progress.best,
                          time.perf_counter() - started, dist_info)
    summary = distributed.broadcast_object(summary)
    distributed.cleanup()
    return summary


def _load_splits(cfg: TrainConfig, state: dict | None, dist_info) -> Splits:
    """The dataset's splits, checked against a continued run's classes and the batch size's divisibility."""
    splits = load_splits(cfg.dataset, cfg.data_dir, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                         seed=cfg.seed, download=cfg.download and dist_info.is_main)
    n_classes = len(splits.class_names)
    if state is not None and list(state["class_names"]) != splits.class_names:
        raise UserError(
            f"--resume {cfg.resume} was trained on {len(state['class_names'])} classes, {cfg.data_dir} has "
            f"{n_classes}. Resume on the same dataset, or start a new run with --init-from."
        )
    if state is not None and state.get("data_fingerprint", splits.fingerprint()) != splits.fingerprint():
        raise UserError(f"The images of {cfg.data_dir} (or its train/val/test split) changed since {cfg.resume} was "
                        "saved: continuing would not be the same run. Resume on the data it started on, or start a new "
                        "stage from its weights with --init-from and another --output-dir.")
    world = dist_info.world_size
    if cfg.batch_size != "auto" and cfg.batch_size % (cfg.grad_accum_steps * world):
        raise UserError(f"--batch-size {cfg.batch_size} must be divisible by --grad-accum-steps x processes "
                        f"({cfg.grad_accum_steps} x {world}).")
    return splits


def build_model(cfg: TrainConfig, class_names: list[str], state: dict | None, device: torch.device):
    """The timm model with its starting weights (pretrained, a resumed run's, or `--init-from`'s), frozen
    backbone when asked, on the device in its memory format. Returns (model, autocast dtype or None)."""
    model = create_model(cfg.backbone, len(class_names), pretrained="none" if (state or cfg.init_from) else cfg.pretrained,
                         drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate, image_size=cfg.image_size)
    if state is not None:
        model.load_state_dict(grow_head(model, state["model"], state["class_names"], class_names, cfg.resume))
    elif cfg.init_from:
        weights, init_classes = init_state(cfg.init_from, model, cfg.backbone)
        model.load_state_dict(grow_head(model, weights, init_classes, class_names, cfg.init_from))
    if cfg.freeze_backbone:
        freeze_backbone(model)
    model.to(device, memory_format=_memory_format(cfg, device))
    return model, amp_dtype(device, cfg.amp)


def _memory_format(cfg: TrainConfig, device: torch.device) -> torch.memory_format:
    return torch.channels_last if channels_last_for(device, cfg.channels_last) else torch.contiguous_format


def build_data(cfg: TrainConfig, splits: Splits, model: nn.Module, device: torch.device, dtype, dist_info,
               state: dict | None) -> Data:
    """Transforms, loaders and the batch plan for `model`'s input size (a continued run keeps its plan)."""
    dcfg = data_config(model, cfg.image_size)
    micro_batch, accum_steps, batch_size = _batch_plan(cfg, model, dcfg["image_size"], device, dtype,
                                                       dist_info.world_size, state)
    seed_everything(cfg.seed)  # the batch-size probe may have drawn random numbers
    train_tf = augment.train_transform(cfg.augment, dcfg["image_size"], dcfg["mean"], dcfg["std"], uint8=True)
    eval_tf = augment.eval_transform(dcfg["image_size"], dcfg["mean"], dcfg["std"], dcfg["crop_pct"],
                                     dcfg["interpolation"], uint8=True)
    loader_args = dict(seed=cfg.seed, num_workers=cfg.num_workers, rank=dist_info.rank,
                       world_size=dist_info.world_size, pin_memory=device.type == "cuda")
    train_loader = make_loader(ImageDataset(splits.train, train_tf, strict=cfg.strict_data), batch_size=micro_batch,
                               shuffle=True, **loader_args)
    val_loader = make_loader(ImageDataset(splits.val, eval_tf, strict=cfg.strict_data), batch_size=micro_batch * 2,
                             shuffle=False, **loader_args)
    return Data(splits, dcfg, train_loader, val_loader, eval_tf, augment.DeviceNormalize(dcfg["mean"], dcfg["std"]),
                micro_batch, accum_steps, batch_size)


def build_run(cfg: TrainConfig, model: nn.Module, data: Data, device: torch.device, dtype, dist_info) -> Run:
    """Optimizer, schedule, loss, mixup, teacher and EMA around `model` (wrapped for DDP and compiled when asked)."""
    steps_per_epoch = math.ceil(len(data.train_loader) / data.accum_steps)
    if cfg.max_steps:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps)
    optimizer = make_optimizer(model, cfg, device)
    scheduler = make_scheduler(optimizer, kind=cfg.scheduler, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
                               warmup_epochs=cfg.warmup_epochs, lr=cfg.lr, min_lr=cfg.min_lr,
                               restart_epochs=cfg.restart_epochs)
    mixing = cfg.mixup or cfg.cutmix
    teacher = (Teacher(cfg.teacher, data.data_config, device, class_names=data.splits.class_names) if cfg.teacher
               else None)
    ema = make_ema(model, cfg.model_ema_decay) if cfg.model_ema else None
    wrapped = model
    if dist_info.enabled:
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile_for(device, cfg.compile):
        wrapped = torch.compile(wrapped)
    return Run(model=wrapped, raw_model=model, optimizer=optimizer, scheduler=scheduler,
               criterion=make_criterion(mixing, cfg.label_smoothing), device=device, seed=cfg.seed,
               accum_steps=data.accum_steps, steps_per_epoch=steps_per_epoch, micro_per_epoch=len(data.train_loader),
               memory_format=_memory_format(cfg, device), amp=dtype,
               scaler=torch.amp.GradScaler(device.type) if dtype == torch.float16 else None,
               mixup=make_mixup(cfg, len(data.splits.class_names)) if mixing else None, teacher=teacher,
               kd_alpha=cfg.kd_alpha, kd_temperature=cfg.kd_temperature,
               ema=ema,
               frozen_backbone=cfg.freeze_backbone or cfg.freeze_bn, clip_grad=cfg.clip_grad,
               nan_policy=cfg.nan_policy, log_interval=cfg.log_interval, normalize=data.normalize)


def restore(run: Run, state: dict | None, continuing: bool, resume: str | None) -> Progress:
    """Load a continued run's optimizer, scaler and EMA state; returns where it stopped (a fresh start
    otherwise: a resume checkpoint with other settings only gave its weights to `build_model`)."""
    if state is None or not continuing:
        if state is not None:
            _logger.info("Starting a new stage from the weights of %s (its settings differ)", resume)
        return Progress()
    run.optimizer.load_state_dict(state["optimizer"])
    if run.scaler and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    if run.ema is not None and state.get("model_ema"):
        run.ema.module.load_state_dict(state["model_ema"])
    run.num_updates = state["num_updates"]
    _logger.info("Resuming %s at epoch %d, step %d", resume, state["epoch"] + 1, state["step"])
    return Progress(epoch=state["epoch"], step=state["step"], best=dict(state["best"]),
                    sums_state=state.get("train_sums"), finished=state.get("finished", False))


def _start_output(cfg: TrainConfig, device: torch.device, dist_info, completed_epochs: int | None) -> Path:
    """Write config.yaml and run_info.json (rank 0); a continued run carries its metrics.csv over."""
    out = Path(cfg.output_dir)
    if dist_info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        info = {**run_info(device, cfg.seed), "world_size": dist_info.world_size}
        atomic_write_text(out / "run_info.json", json.dumps(info, indent=2))
        if completed_epochs is not None:
            _carry_metrics(cfg.resume, out, completed_epochs)
    return out


def train_epochs(cfg: TrainConfig, run: Run, data: Data, progress: Progress, out: Path, dist_info) -> None:
    """The epoch loop: train, validate, log a metrics row, keep best.pt and last.pt, stop early or at the end."""
    world, is_main = dist_info.world_size, dist_info.is_main

    def save(epoch: int, step: int, sums: Sums | None) -> None:  # mid-epoch, from train_one_epoch
        _save_last(cfg, run, data, progress, out, epoch, step, sums, is_main)

    while not progress.finished and progress.epoch < cfg.epochs:
        epoch = progress.epoch
        data.train_loader.sampler.set_epoch(epoch, start=progress.step * data.accum_steps * data.micro_batch * world)
        hold_backbone(run.optimizer, epoch < cfg.head_warmup_epochs)
        run.scheduler.step_update(run.num_updates)
        sums = Sums()
        if progress.sums_state is not None and progress.step > 0 and is_main:  # the saved sums are all ranks'
            sums.load(progress.sums_state)
        reset_peak_memory(run.device)
        train = train_one_epoch(run, data.train_loader, epoch, start_step=progress.step, sums=sums, save_fn=save,
                                save_every=cfg.checkpoint_every)
        progress.step, progress.sums_state = 0, None
        row, val, val_bad = _validate_epoch(run, data, epoch, train)
        improved = val["top1"] > progress.best["top1"]
        best = progress.best
        progress.best = ({"top1": val["top1"], "epoch": epoch + 1, "since": 0} if improved
                         else {**best, "since": best["since"] + 1})
        stop = cfg.early_stopping and progress.best["since"] >= cfg.patience
        progress.finished = stop or epoch + 1 == cfg.epochs
        bad_paths = distributed.all_gather_object([data.splits.train[i][0] for i in run.bad_indices]
                                                  + [data.splits.val[i][0] for i in val_bad])
        if is_main:
            _report_bad_files({p for paths in bad_paths for p in paths}, out)
            append_row(out / "metrics.csv", row)
            if improved:
                _save_best(cfg, run, data, out, epoch + 1, val)
        _save_last(cfg, run, data, progress, out, epoch + 1, 0, None, is_main, progress.finished)
        _logger.info("epoch %d/%d  train loss %.3f top1 %.1f | val loss %.3f top1 %.1f top5 %.1f | %.0f img/s%s",
                     epoch + 1, cfg.epochs, train["loss"], train["top1"], val["loss"], val["top1"], val["top5"],
                     train["images_per_s"], "  (best)" if improved else "")
        if stop:
            _logger.info("Early stopping: no val top-1 improvement for %d epochs (best %.2f at epoch %d)",
                         cfg.patience, progress.best["top1"], progress.best["epoch"])
        progress.epoch += 1


def _validate_epoch(run: Run, data: Data, epoch: int, train: dict) -> tuple[dict, dict, set[int]]:
    """Validate the weights (and the EMA weights); returns (metrics.csv row, val metrics, unreadable val indices)."""
    val_bad: set[int] = set()
    val = validate_model(run.raw_model, data.val_loader, run.device, run.amp, bad=val_bad, normalize=data.normalize)
    row = {"epoch": epoch + 1, "train_loss": train["loss"], "train_top1": train["top1"], "val_loss": val["loss"],
           "val_top1": val["top1"], "val_top5": val["top5"]}
    if run.ema is not None:
        val_ema = validate_model(run.ema.module, data.val_loader, run.device, run.amp, normalize=data.normalize)
        row.update(val_ema_top1=val_ema["top1"], val_ema_top5=val_ema["top5"])
    row.update(lr=_head_lr(run.optimizer), images_per_s=train["images_per_s"], epoch_seconds=train["seconds"],
               peak_mem_mb=peak_memory_mb(run.device))
    return row, val, val_bad


def _save_best(cfg: TrainConfig, run: Run, data: Data, out: Path, epoch: int, val: dict) -> None:
    ema = run.ema.module.state_dict() if run.ema is not None else None
    checkpoint.save_atomic({"model": run.raw_model.state_dict(), "model_ema": ema, "epoch": epoch, "val": val,
                            "config": _config_dict(cfg), "class_names": data.splits.class_names,
                            "data_config": data.data_config}, out / checkpoint.BEST)


def _save_last(cfg: TrainConfig, run: Run, data: Data, progress: Progress, out: Path, epoch: int, step: int,
               sums: Sums | None, is_main: bool, finished: bool = False) -> None:
    """Write last.pt: everything a resume needs to continue at (epoch, step). Every rank calls this (the
    running sums are summed over the ranks); only rank 0 writes."""
    all_sums = distributed.all_sum(sums.state(), run.device) if sums else None
    if not is_main:
        return
    checkpoint.save_atomic({
        "model": run.raw_model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler else None,
        "model_ema": run.ema.module.state_dict() if run.ema is not None else None,
        "epoch": epoch, "step": step, "num_updates": run.num_updates, "best": progress.best, "finished": finished,
        "train_sums": all_sums, "config": _config_dict(cfg),
        "batch_plan": {"micro_batch": data.micro_batch, "accum_steps": data.accum_steps,
                       "effective_batch": data.batch_size},
        "class_names": data.splits.class_names, "data_config": data.data_config,
        "data_fingerprint": data.splits.fingerprint(),
    }, out / checkpoint.LAST)


def _final_test(cfg, out, splits, eval_tf, normalize, device, dtype, best, seconds, dist_info) -> dict:
    """Evaluate the best checkpoint (and its EMA weights) once on the test split, with the validation split's
    transform and normaliser; write summary.json."""
    summary = {"output_dir": str(out), "best_epoch": best["epoch"], "val_top1": best["top1"], "train_seconds": seconds}
    if not dist_info.is_main:
        return summary
    loader = make_loader(ImageDataset(splits.test, eval_tf, strict=cfg.strict_data), batch_size=64, shuffle=False,
                         seed=0, num_workers=cfg.num_workers)
    for weights in ("model", "model_ema"):
        if weights == "model_ema" and not cfg.model_ema:
            continue
        trained = load_trained(out, use_ema=weights == "model_ema", device=device)
        test_bad: set[int] = set()
        test = (validate_model(trained.model, loader, device, dtype, reduce=False, bad=test_bad, normalize=normalize)
                if splits.test else {})
        _report_bad_files({splits.test[i][0] for i in test_bad}, out)
        prefix = "test" if weights == "model" else "test_ema"
        summary.update({f"{prefix}_{k}": v for k, v in test.items()})
    summary["epochs_run"] = _count_rows(out / "metrics.csv")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    _logger.info("Test top-1 %.2f%% (top-5 %.2f%%) on %d images; outputs in %s", summary.get("test_top1", float("nan")),
                 summary.get("test_top5", float("nan")), summary.get("test_n", 0), out)
    return summary


def _config_dict(cfg: TrainConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["teacher"] = list(cfg.teacher)
    return d


def _count_rows(path: Path) -> int:
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


def _carry_metrics(resume: str, out: Path, completed_epochs: int) -> None:
    """Keep metrics.csv consistent with the checkpoint: copy it from the resumed folder when the output folder
    differs, and drop rows of epochs after the checkpoint (written just before a crash)."""
    source = checkpoint.resolve(resume, checkpoint.LAST).parent / "metrics.csv"
    target = out / "metrics.csv"
    if source.exists() and source.resolve() != target.resolve():
        atomic_write_text(target, source.read_text(encoding="utf-8", errors="surrogateescape"))
    truncate_rows(target, completed_epochs)


def _recording(loader, bad: set[int]):
    """Iterate `loader`, adding the dataset indices of unreadable images (the items' last field) to `bad`."""
    for batch in loader:
        bad.update(i for i in batch[3].tolist() if i >= 0)
        yield batch


def _report_bad_files(paths: set[str], out: Path) -> None:
    """Add unreadable images to out/bad_files.txt, with one warning for those not listed there yet (so a bad
    file is announced once per run, not once per epoch or per file)."""
    log = out / "bad_files.txt"
    known = set(log.read_text(errors="surrogateescape").splitlines()) if log.exists() else set()
    new = sorted(set(paths) - known)
    if not new:
        return
    atomic_write_text(log, "\n".join(sorted(known | set(new))) + "\n")
    shown = ", ".join(new[:3]) + (f" and {len(new) - 3} more" if len(new) > 3 else "")
    _logger.warning("%d unreadable image(s) skipped, each replaced by the next readable one: %s. All %d are listed "
                    "in %s; --strict-data makes them an error, `python -m helpers check-data` lists every problem.",
                    len(new), shown, len(known) + len(new), log)
