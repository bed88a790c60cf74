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
import functools
import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from timm.data import Mixup
from timm.utils import ModelEmaV3
from torch import nn

from ..base import distributed
from ..base.config import TrainConfig, validate
from ..base.devices import (
    amp_dtype,
    autocast,
    channels_last_for,
    compile_for,
    get_device,
    peak_memory_mb,
    reset_peak_memory,
    seed_everything,
    to_device,
    to_model_input,
)
from ..base.errors import UserError
from ..base.io import atomic_write_text
from ..base.lock import run_lock
from ..base.mps_check import device_code
from ..base.progress import progress_bar
from ..data import augment
from ..data.loaders import ImageDataset, index_seed, make_loader
from ..data.splits import Splits, load_splits
from . import checkpoint, test_predictions
from .distill import Teacher, kd_loss
from .evaluation import validate_model
from .metrics import Sums, append_row
from .models import create_model, data_config, freeze_backbone, grow_head, set_train_mode
from .recipe import hold_backbone, make_criterion, make_ema, make_mixup, make_optimizer, make_scheduler
from .run_folder import (
    config_dict,
    continue_in_place,
    count_rows,
    prepare_output,
    report_bad_files,
    start_output,
    weights_record,
)
from .trained import Trained, from_state

_logger = logging.getLogger(__name__)


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


def _batch_plan(cfg: TrainConfig, model: nn.Module, image_size: int, device: torch.device, dtype, world: int,
                state: dict | None) -> tuple[int, int, int]:
    """(micro-batch per process, accumulation steps, images per optimizer step). With --batch-size auto the
    largest micro-batch that fits is measured (helpers.training.batch_size) and accumulation keeps --auto-batch-target;
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


def locked_output(fn: Callable) -> Callable:
    """Decorate a function whose first argument is a TrainConfig: validate it (nothing is written for bad
    settings), then hold the lock of its `output_dir` (a continuation's: its checkpoint's folder,
    `continue_in_place`) for the whole call, released when it returns or raises."""

    @functools.wraps(fn)
    def wrapper(cfg, *args, **kwargs):
        cfg = continue_in_place(validate(cfg))
        with run_lock(cfg.output_dir, f"--output-dir {cfg.output_dir}"):
            return fn(cfg, *args, **kwargs)

    return wrapper


@locked_output  # one run per output folder: a second one stops with exit 2 naming this one
def fit(cfg: TrainConfig, *, teachers: Sequence[Trained] = (),
        init: Callable[[], tuple[dict[str, torch.Tensor], list[str]]] | None = None) -> dict:
    """Train, validate every epoch, early-stop on validation, test the best weights once. Returns the summary
    that is also written to `output_dir/summary.json` (which also records the run's weights, `weights_record`).

    The loop does not load other runs: what `cfg.teacher` and `cfg.init_from` name comes in loaded
    (`helpers.train` and the train command load them with `helpers.use.runs`).

    Args:
        teachers: the trained models of `cfg.teacher`, in its order (on any device).
        init: returns (weights, class names of the head's rows) of `cfg.init_from`; called only when the run
            starts from them (not when it continues from its own checkpoint).
    """
    if bool(cfg.teacher) != bool(teachers) or (cfg.init_from is not None) != (init is not None):
        raise ValueError("fit takes the runs of cfg.teacher and cfg.init_from loaded (teachers=, init=): call "
                         "helpers.train(cfg), which loads them.")
    cfg = validate(cfg)
    dist_info = distributed.setup(cfg.device)
    device = get_device(cfg.device, dist_info.local_rank)
    cfg, state, continuing = prepare_output(cfg)
    distributed.barrier()  # every rank has checked the output folder before rank 0 writes into it
    splits = _load_splits(cfg, state if continuing else None, dist_info)
    earlier = _finished_earlier(cfg, state if continuing else None, splits.class_names, dist_info)
    if earlier is not None:
        distributed.cleanup()
        return earlier
    seed_everything(cfg.seed)
    model, dtype = build_model(cfg, splits.class_names, state, device, init)
    data = build_data(cfg, splits, model, device, dtype, dist_info, state if continuing else None)
    run = build_run(cfg, model, data, device, dtype, dist_info, teachers)
    progress = restore(run, state, continuing, cfg.resume)
    out = start_output(cfg, device, dist_info, progress.epoch if continuing else None)
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


def _finished_earlier(cfg: TrainConfig, state: dict | None, class_names: list[str], dist_info) -> dict | None:
    """The summary of a continued run with nothing left to train (a course's reused run, a second `--resume` of a
    finished run), when its summary.json is its last training's: it records the weights best.pt holds and counts
    every row of metrics.csv. Testing the same weights on the same split again would only write the same numbers
    (the split's photos were checked against the checkpoint's by `_load_splits`). None: train and test as usual."""
    if state is None or dist_info.world_size > 1 or not (state.get("finished") or state["epoch"] >= cfg.epochs):
        return None
    out = Path(cfg.output_dir)
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):  # killed between its last checkpoint and its test: test it now
        return None
    if (not isinstance(summary, dict) or summary.get("weights") != weights_record(out / checkpoint.BEST, class_names)
            or summary.get("epochs_run") != count_rows(out / "metrics.csv")
            or (cfg.model_ema and "test_ema_top1" not in summary)):
        return None
    _logger.info("%s finished earlier (%d epochs): its test result stands (summary.json), test top-1 %.2f%%",
                 out, summary["epochs_run"], summary.get("test_top1", float("nan")))
    return {**{k: v for k, v in summary.items() if k != "weights"}, "output_dir": str(out)}  # a copied run: here


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


def build_model(cfg: TrainConfig, class_names: list[str], state: dict | None, device: torch.device,
                init: Callable[[], tuple[dict, list[str]]] | None = None):
    """The timm model with its starting weights (pretrained, a resumed run's, or `--init-from`'s), frozen
    backbone when asked, on the device in its memory format. Returns (model, autocast dtype or None)."""
    model = create_model(cfg.backbone, len(class_names), pretrained="none" if (state or cfg.init_from) else cfg.pretrained,
                         drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate, image_size=cfg.image_size)
    if state is not None:
        model.load_state_dict(grow_head(model, state["model"], state["class_names"], class_names, cfg.resume))
    elif cfg.init_from:
        weights, init_classes = init()
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


def build_run(cfg: TrainConfig, model: nn.Module, data: Data, device: torch.device, dtype, dist_info,
              teachers: Sequence[Trained] = ()) -> Run:
    """Optimizer, schedule, loss, mixup, teacher and EMA around `model` (wrapped for DDP and compiled when asked)."""
    steps_per_epoch = math.ceil(len(data.train_loader) / data.accum_steps)
    if cfg.max_steps:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps)
    optimizer = make_optimizer(model, cfg, device)
    scheduler = make_scheduler(optimizer, kind=cfg.scheduler, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
                               warmup_epochs=cfg.warmup_epochs, lr=cfg.lr, min_lr=cfg.min_lr,
                               restart_epochs=cfg.restart_epochs)
    mixing = cfg.mixup or cfg.cutmix
    teacher = (Teacher(teachers, data.data_config, class_names=data.splits.class_names).to(device) if teachers
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
            report_bad_files({p for paths in bad_paths for p in paths}, out)
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
                            "config": config_dict(cfg), "class_names": data.splits.class_names,
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
        "train_sums": all_sums, "config": config_dict(cfg),
        "batch_plan": {"micro_batch": data.micro_batch, "accum_steps": data.accum_steps,
                       "effective_batch": data.batch_size},
        "class_names": data.splits.class_names, "data_config": data.data_config,
        "data_fingerprint": data.splits.fingerprint(),
    }, out / checkpoint.LAST)


def _final_test(cfg, out, splits, eval_tf, normalize, device, dtype, best, seconds, dist_info) -> dict:
    """Evaluate the best checkpoint (and its EMA weights) once on the test split, with the validation split's
    transform and normaliser; write summary.json and the predictions (`test_predictions`)."""
    summary = {"output_dir": str(out), "best_epoch": best["epoch"], "val_top1": best["top1"], "train_seconds": seconds}
    if not dist_info.is_main:
        return summary
    loader = make_loader(ImageDataset(splits.test, eval_tf, strict=cfg.strict_data), batch_size=64, shuffle=False,
                         seed=0, num_workers=cfg.num_workers)
    kept = test_predictions.Recorder(out, cfg, splits, device, dtype)
    for weights in ("model", "model_ema") if cfg.model_ema else ("model",):
        trained = from_state(checkpoint.load(out), str(out), use_ema=weights == "model_ema", device=device)
        test_bad: set[int] = set()
        test = (validate_model(trained.model, loader, device, dtype, reduce=False, bad=test_bad, normalize=normalize,
                               keep=kept.keep(weights, cfg.backbone, trained.data_config["image_size"]))
                if splits.test else {})
        report_bad_files({splits.test[i][0] for i in test_bad}, out)
        prefix = "test" if weights == "model" else "test_ema"
        summary.update({f"{prefix}_{k}": v for k, v in test.items()})
    summary["epochs_run"] = count_rows(out / "metrics.csv")
    record = {"weights": weights_record(out / checkpoint.BEST, splits.class_names)}  # loading checks best.pt by it
    atomic_write_text(out / "summary.json", json.dumps({**summary, **record}, indent=2))
    kept.write()  # test_predictions.pt: a later evaluation of these weights on this split reads them
    _logger.info("Test top-1 %.2f%% (top-5 %.2f%%) on %d images; outputs in %s", summary.get("test_top1", float("nan")),
                 summary.get("test_top5", float("nan")), summary.get("test_n", 0), out)
    return summary
