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

import dataclasses
import json
import logging
import math
import random
import sys
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
from tqdm.auto import tqdm

from . import augment, checkpoint, distributed
from .config import TrainConfig, UserError, config_from_dict, save_config, validate
from .data import ImageDataset, index_seed, load_splits, make_loader
from .inference import init_state, load_trained, predict_logits, to_model_input
from .losses import kd_loss
from .metrics import Sums, append_row, topk_correct, truncate_rows
from .models import (
    create_model,
    data_config,
    freeze_backbone,
    grow_head,
    layer_decay_param_groups,
    param_groups,
    set_train_mode,
)
from .utils import amp_dtype, autocast, get_device, peak_memory_mb, reset_peak_memory, run_info, seed_everything

_logger = logging.getLogger(__name__)

# Settings that may change between a run and its resumption without changing what is computed.
RUNTIME_FIELDS = {"resume", "output_dir", "device", "num_workers", "log_interval", "checkpoint_every", "compile",
                  "download", "data_dir", "strict_data"}


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


def train_one_epoch(run: Run, loader, epoch: int, *, start_step: int = 0, sums: Sums | None = None,
                    save_fn: Callable[[int, int, Sums], None] | None = None, save_every: int = 0) -> dict:
    """Train one epoch from optimizer step `start_step`; returns loss/top1/top5 (sample-weighted) and images/s."""
    set_train_mode(run.raw_model, run.frozen_backbone)
    sums = sums or Sums()
    batches, n_micro_total = iter(loader), run.micro_per_epoch
    bar = tqdm(total=run.steps_per_epoch, initial=start_step, desc=f"epoch {epoch + 1}", leave=False,
               file=sys.stderr, mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True,
               disable=not distributed.is_main())
    seen, started = 0, time.perf_counter()
    for step in range(start_step, run.steps_per_epoch):
        _reseed(run.seed, epoch, step)
        n_micro = min(run.accum_steps, n_micro_total - step * run.accum_steps)
        run.optimizer.zero_grad(set_to_none=True)
        for micro in range(n_micro):
            images, labels, _, bad = next(batches)
            run.bad_indices.update(i for i in bad.tolist() if i >= 0)
            images = to_model_input(images, run.device, run.normalize, run.memory_format)
            labels = labels.to(run.device, non_blocking=True)
            targets = labels
            if run.mixup is not None:
                images, labels = _even(images), _even(labels)  # timm's Mixup pairs the batch with its mirror
                images, targets = run.mixup(images, labels)
            last = micro == n_micro - 1
            sync = run.model.no_sync() if (not last and hasattr(run.model, "no_sync")) else _nullcontext()
            with sync:
                with autocast(run.device, run.amp):
                    logits = run.model(images)
                    loss = run.criterion(logits, targets)
                    if run.teacher is not None:
                        with torch.no_grad():
                            teacher_logits = run.teacher(images)
                        loss = kd_loss(logits, teacher_logits, loss, alpha=run.kd_alpha, temperature=run.kd_temperature)
                # one sync per micro-batch: a NaN must never reach the weights; under DDP every rank takes the
                # same branch (one rank skipping the backward that the others run would hang the all-reduce)
                if not distributed.all_true(torch.isfinite(loss), run.device):
                    if run.nan_policy == "stop":
                        raise NonFiniteLossError(
                            f"The loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}. The last good "
                            "checkpoint is kept. Lower --lr, turn off --amp, or use --nan-policy skip.")
                    _logger.warning("Skipping step %d of epoch %d: loss is %s", step + 1, epoch + 1, loss.item())
                    run.optimizer.zero_grad(set_to_none=True)
                    for _ in range(n_micro - micro - 1):  # keep the loader aligned with the step count
                        next(batches)
                    break
                scaled = loss / run.accum_steps
                (run.scaler.scale(scaled) if run.scaler else scaled).backward()
            top1, top5 = topk_correct(logits.detach(), labels)
            sums.update(float(loss.detach()) * len(labels), len(labels), top1, top5)
            seen += len(labels)
        else:
            _optimizer_step(run)
        bar.update(1)
        if (step + 1) % run.log_interval == 0 or step + 1 == run.steps_per_epoch:
            bar.set_postfix(loss=f"{sums.result()['loss']:.3f}", lr=f"{_head_lr(run.optimizer):.2e}")
        if save_fn and save_every and (step + 1) % save_every == 0 and step + 1 < run.steps_per_epoch:
            save_fn(epoch, step + 1, sums)
    bar.close()
    elapsed = time.perf_counter() - started
    total = Sums()  # every rank's samples: under DDP each rank saw only its shard of the batches
    total.load(distributed.all_sum(sums.state(), run.device))
    seen = distributed.all_sum([seen], run.device)[0]
    return {**total.result(), "images_per_s": seen / max(elapsed, 1e-9), "seconds": elapsed}


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


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _head_lr(optimizer: torch.optim.Optimizer) -> float:
    return max(g["lr"] for g in optimizer.param_groups)


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
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=device.type in ("cuda", "mps"))


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


class Teacher(nn.Module):
    """One or more trained models as a distillation teacher. Each member gets the student's batch converted
    to its own normalisation and input size; several members return the log of their mean softmax.
    """

    def __init__(self, paths: tuple[str, ...], student_data: dict, device: torch.device):
        super().__init__()
        members = [load_trained(p, device=device) for p in paths]
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
        for model, d in zip(self.models, self.data):
            xi = _convert_batch(x, self.student, d)
            logits = model(xi).float()
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
        resume = str(out) if (out / checkpoint.LAST).is_file() else None
    if resume is None:
        if (out / checkpoint.LAST).exists() or (out / "config.yaml").exists():
            if cfg.resume is None or not _same_run_started(out, cfg):
                raise UserError(
                    f"{out} already holds another run. Continue it with --resume {out} and its settings, or choose "
                    "another --output-dir."
                )
            if distributed.is_main():  # killed before its first checkpoint: start over, without that try's rows
                (out / "metrics.csv").unlink(missing_ok=True)
        if cfg.resume is not None:
            _logger.info("No checkpoint of this run in %s yet: starting it from the beginning", out)
        return dataclasses.replace(cfg, resume=None), None, False
    state = checkpoint.load(resume, prefer=checkpoint.LAST)
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
                      channels_last=cfg.channels_last, amp_dtype=dtype)
    if world > 1:  # every process needs the same micro-batch
        micro = min(distributed.all_gather_object(plan.micro_batch))
        plan = plan_accumulation(cfg.auto_batch_target or micro * world, micro, world)
    _logger.info("--batch-size auto: micro-batch %d x %d accumulation steps x %d processes = %d images per step",
                 plan.micro_batch, plan.accum_steps, world, plan.effective_batch)
    return plan.micro_batch, plan.accum_steps, plan.effective_batch


def fit(cfg: TrainConfig) -> dict:
    """Train, validate every epoch, early-stop on validation, test the best weights once. Returns the summary
    that is also written to `output_dir/summary.json`.
    """
    cfg = validate(cfg)
    dist_info = distributed.setup(cfg.device)
    device = get_device(cfg.device, dist_info.local_rank)
    cfg, state, continuing = _prepare_output(cfg)
    distributed.barrier()  # every rank has checked the output folder before rank 0 writes into it
    splits = load_splits(cfg.dataset, cfg.data_dir, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                         seed=cfg.seed, download=cfg.download and dist_info.is_main)
    n_classes = len(splits.class_names)
    if state is not None and continuing and list(state["class_names"]) != splits.class_names:
        raise UserError(
            f"--resume {cfg.resume} was trained on {len(state['class_names'])} classes, {cfg.data_dir} has "
            f"{n_classes}. Resume on the same dataset, or start a new run with --init-from."
        )
    world = dist_info.world_size
    if cfg.batch_size != "auto" and cfg.batch_size % (cfg.grad_accum_steps * world):
        raise UserError(f"--batch-size {cfg.batch_size} must be divisible by --grad-accum-steps x processes "
                        f"({cfg.grad_accum_steps} x {world}).")
    seed_everything(cfg.seed)

    # 1. Model
    model = create_model(cfg.backbone, n_classes, pretrained="none" if (state or cfg.init_from) else cfg.pretrained,
                         drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate)
    if state is not None:
        model.load_state_dict(grow_head(model, state["model"]))
    elif cfg.init_from:
        model.load_state_dict(grow_head(model, init_state(cfg.init_from, model, cfg.backbone)))
    if cfg.freeze_backbone:
        freeze_backbone(model)
    dcfg = data_config(model, cfg.image_size)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    dtype = amp_dtype(device, cfg.amp)
    micro_batch, accum_steps, batch_size = _batch_plan(cfg, model, dcfg["image_size"], device, dtype, world,
                                                       state if continuing else None)
    seed_everything(cfg.seed)  # the batch-size probe may have drawn random numbers

    # 2. Data
    train_tf = augment.train_transform(cfg.augment, dcfg["image_size"], dcfg["mean"], dcfg["std"], uint8=True)
    eval_tf = augment.eval_transform(dcfg["image_size"], dcfg["mean"], dcfg["std"], dcfg["crop_pct"], dcfg["interpolation"],
                                     uint8=True)
    normalize = augment.DeviceNormalize(dcfg["mean"], dcfg["std"])  # the loaders send uint8 batches
    pin = device.type == "cuda"
    loader_args = dict(seed=cfg.seed, num_workers=cfg.num_workers, rank=dist_info.rank, world_size=world, pin_memory=pin)
    train_loader = make_loader(ImageDataset(splits.train, train_tf, strict=cfg.strict_data), batch_size=micro_batch,
                               shuffle=True, **loader_args)
    val_loader = make_loader(ImageDataset(splits.val, eval_tf, strict=cfg.strict_data), batch_size=micro_batch * 2,
                             shuffle=False, **loader_args)
    micro_per_epoch = len(train_loader)
    steps_per_epoch = math.ceil(micro_per_epoch / accum_steps)

    # 3. Optimisation
    optimizer = make_optimizer(model, cfg, device)
    scheduler = make_scheduler(optimizer, kind=cfg.scheduler, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
                               warmup_epochs=cfg.warmup_epochs, lr=cfg.lr, min_lr=cfg.min_lr,
                               restart_epochs=cfg.restart_epochs)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    mixing = cfg.mixup or cfg.cutmix
    mixup = make_mixup(cfg, n_classes) if mixing else None
    criterion = make_criterion(mixing, cfg.label_smoothing)
    teacher = Teacher(cfg.teacher, dcfg, device) if cfg.teacher else None
    if teacher is not None and teacher.class_names != splits.class_names:
        raise UserError(f"The teacher {cfg.teacher[0]} was trained on other classes than {cfg.data_dir}.")
    ema = make_ema(model, cfg.model_ema_decay) if cfg.model_ema else None

    # 4. Restore
    start_epoch, start_step, sums_state = 0, 0, None
    best = {"top1": -1.0, "epoch": 0, "since": 0}
    num_updates = 0
    if state is not None and continuing:
        optimizer.load_state_dict(state["optimizer"])
        if scaler and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("model_ema"):
            ema.module.load_state_dict(state["model_ema"])
        start_epoch, start_step, num_updates = state["epoch"], state["step"], state["num_updates"]
        best = dict(state["best"])
        sums_state = state.get("train_sums")
        _logger.info("Resuming %s at epoch %d, step %d", cfg.resume, start_epoch + 1, start_step)
    elif state is not None:
        _logger.info("Starting a new stage from the weights of %s (its settings differ)", cfg.resume)

    ddp_model = model
    if dist_info.enabled:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        ddp_model = torch.compile(ddp_model)
    run = Run(model=ddp_model, raw_model=model, optimizer=optimizer, scheduler=scheduler, criterion=criterion,
              device=device, seed=cfg.seed, accum_steps=accum_steps, steps_per_epoch=steps_per_epoch,
              micro_per_epoch=micro_per_epoch, memory_format=memory_format,
              amp=dtype, scaler=scaler, mixup=mixup, teacher=teacher, kd_alpha=cfg.kd_alpha,
              kd_temperature=cfg.kd_temperature, ema=ema, frozen_backbone=cfg.freeze_backbone or cfg.freeze_bn,
              clip_grad=cfg.clip_grad, nan_policy=cfg.nan_policy, log_interval=cfg.log_interval,
              num_updates=num_updates, normalize=normalize)

    out = Path(cfg.output_dir)
    if dist_info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        (out / "run_info.json").write_text(json.dumps({**run_info(device, cfg.seed), "world_size": world}, indent=2))
        if continuing:
            _carry_metrics(cfg.resume, out, start_epoch)

    def save(epoch: int, step: int, sums: Sums | None, finished: bool = False) -> None:
        all_sums = distributed.all_sum(sums.state(), device) if sums else None  # every rank calls this
        if not dist_info.is_main:
            return
        checkpoint.save_atomic({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler else None,
            "model_ema": ema.module.state_dict() if ema is not None else None,
            "epoch": epoch, "step": step, "num_updates": run.num_updates, "best": best, "finished": finished,
            "train_sums": all_sums, "config": _config_dict(cfg),
            "batch_plan": {"micro_batch": micro_batch, "accum_steps": accum_steps, "effective_batch": batch_size},
            "class_names": splits.class_names, "data_config": dcfg,
        }, out / checkpoint.LAST)

    _logger.info("Training %s on %d images (%d val, %d test), %d classes, %s, batch %d, %d steps/epoch",
                 cfg.backbone, len(splits.train), len(splits.val), len(splits.test), n_classes, device,
                 batch_size, steps_per_epoch)
    started = time.perf_counter()
    finished = state is not None and continuing and state.get("finished", False)
    epoch = start_epoch
    while not finished and epoch < cfg.epochs:
        train_loader.sampler.set_epoch(epoch, start=start_step * accum_steps * micro_batch * world)
        hold_backbone(optimizer, epoch < cfg.head_warmup_epochs)
        scheduler.step_update(run.num_updates)
        sums = Sums()
        if sums_state is not None and start_step > 0 and dist_info.is_main:  # the saved sums are all ranks'
            sums.load(sums_state)
        reset_peak_memory(device)
        train = train_one_epoch(run, train_loader, epoch, start_step=start_step, sums=sums, save_fn=save,
                                save_every=cfg.checkpoint_every)
        start_step, sums_state = 0, None
        val_bad: set[int] = set()
        val = validate_model(model, val_loader, device, dtype, bad=val_bad, normalize=normalize)
        row = {"epoch": epoch + 1, "train_loss": train["loss"], "train_top1": train["top1"], "val_loss": val["loss"],
               "val_top1": val["top1"], "val_top5": val["top5"]}
        if ema is not None:
            val_ema = validate_model(ema.module, val_loader, device, dtype, normalize=normalize)
            row.update(val_ema_top1=val_ema["top1"], val_ema_top5=val_ema["top5"])
        row.update(lr=_head_lr(optimizer), images_per_s=train["images_per_s"], epoch_seconds=train["seconds"],
                   peak_mem_mb=peak_memory_mb(device))
        improved = val["top1"] > best["top1"]
        best = {"top1": val["top1"], "epoch": epoch + 1, "since": 0} if improved else {**best, "since": best["since"] + 1}
        stop = cfg.early_stopping and best["since"] >= cfg.patience
        finished = stop or epoch + 1 == cfg.epochs
        bad_paths = distributed.all_gather_object([splits.train[i][0] for i in run.bad_indices]
                                                  + [splits.val[i][0] for i in val_bad])
        if dist_info.is_main:
            _report_bad_files({p for paths in bad_paths for p in paths}, out)
            append_row(out / "metrics.csv", row)
            if improved:
                checkpoint.save_atomic({"model": model.state_dict(),
                                        "model_ema": ema.module.state_dict() if ema is not None else None,
                                        "epoch": epoch + 1, "val": val, "config": _config_dict(cfg),
                                        "class_names": splits.class_names, "data_config": dcfg}, out / checkpoint.BEST)
            save(epoch + 1, 0, None, finished)
        _logger.info("epoch %d/%d  train loss %.3f top1 %.1f | val loss %.3f top1 %.1f top5 %.1f | %.0f img/s%s",
                     epoch + 1, cfg.epochs, train["loss"], train["top1"], val["loss"], val["top1"], val["top5"],
                     train["images_per_s"], "  (best)" if improved else "")
        if stop:
            _logger.info("Early stopping: no val top-1 improvement for %d epochs (best %.2f at epoch %d)",
                         cfg.patience, best["top1"], best["epoch"])
        epoch += 1
    distributed.barrier()
    summary = _final_test(cfg, out, splits, eval_tf, normalize, device, dtype, best, time.perf_counter() - started,
                          dist_info)
    summary = distributed.broadcast_object(summary)
    distributed.cleanup()
    return summary


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
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
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
        target.write_text(source.read_text())
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
    known = set(log.read_text().splitlines()) if log.exists() else set()
    new = sorted(set(paths) - known)
    if not new:
        return
    log.write_text("\n".join(sorted(known | set(new))) + "\n")
    shown = ", ".join(new[:3]) + (f" and {len(new) - 3} more" if len(new) > 3 else "")
    _logger.warning("%d unreadable image(s) skipped, each replaced by the next readable one: %s. All %d are listed "
                    "in %s; --strict-data makes them an error, `python -m helpers check-data` lists every problem.",
                    len(new), shown, len(known) + len(new), log)
