"""The learning-rate finder: a short exponential range test through the trainer's own step, which plots the loss
against the rate and suggests one (fastai's `Learner.lr_find`, after Smith, "Cyclical Learning Rates for Training
Neural Networks", 2017, section 3.3).

    result = find_lr(cfg, "runs/lr-find", steps=100)     # writes lr_find.csv and lr_find.json there
    result.suggestion                                     # the valley rule's rate for cfg.lr
    result.suggestions                                    # {"valley": ..., "steep": ..., "minimum": ...}

What it runs. The model, data, optimizer groups and loss of `train` (`engine.build_model`, `build_data`,
`build_run`): the same backbone ratio or layer decay, frozen BatchNorm, augmentation, label smoothing, and mixup,
EMA or a teacher only when the config asks for them. Each step is `engine.train_step`; before it, every optimizer
group's rate is set to rate x the group's `lr_scale`, with the rate growing exponentially from `start_lr` to
`end_lr` over `steps` optimizer steps (the rate is the head's, what `--lr` sets). The data loops over epochs if
the test is longer than one. It starts from the weights a new run starts from: the pretrained ones, those of
`--init-from`, or of a `--resume` checkpoint (as a new stage from it would); `--resume auto` is ignored.

The head-only warm-up. With `head_warmup_epochs` > 0 (the default) `train` holds the backbone still for its first
epoch, and the finder holds it too (`recipe.hold_backbone`): it tests the phase where `--lr` is first applied, as
fastai's `lr_find` does on a frozen pretrained learner. With `head_warmup_epochs=0` the backbone moves from the
first step at rate x its ratio, and so it does in the test. The JSON says which (`backbone_held`).

The curve and the stop (fastai's `LRFinder` and `AvgSmoothLoss`). The smoothed loss is an exponential moving
average with beta 0.98, debiased: avg_i = beta avg_(i-1) + (1 - beta) loss_i, smoothed_i = avg_i / (1 - beta^(i+1)).
The test stops after `steps` steps, or as soon as the smoothed loss exceeds 4 x its lowest value (divergence), or
at a NaN/Inf loss (its rate is the last row, with loss nan).

The suggestions (fastai `callback/schedule.py`: `valley`, `steep`, `minimum`), on the smoothed loss with its first
steps // 10 and last 5 rows left out, and cut at the first NaN, as `lr_find` does before suggesting:
- valley (the default, `RULE`): the longest valley, i.e. the longest decreasing subsequence of the loss; the
  suggestion is its point at index start + int(L/3) + int(L/6), where L = end - start (fastai's code: about half
  way down the valley, before the bottom where the loss flattens);
- steep: the rate where the loss falls fastest against log(rate) (the most negative finite difference);
- minimum: the rate of the lowest loss, divided by 10.

Nothing is saved but the test's own files: the model is built in memory and dropped, so no weights file (the
pretrained weights, an --init-from, --resume or --teacher run) changes. `output_dir` must be new, empty, or an
earlier finder's folder; a training run's folder is refused. It holds only lr_find.csv (step, rate, loss,
smoothed), lr_find.json (the suggestions, the rules, the settings) and the figure a caller draws (`figure=`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..base.config import TrainConfig, validate
from ..base.devices import get_device, seed_everything
from ..base.distributed import DistInfo
from ..base.errors import UserError
from ..base.io import atomic_write_text
from ..base.lock import LOCK_NAME, run_lock
from ..base.mps_check import device_code
from ..base.progress import progress_bar
from ..data.splits import load_splits
from . import checkpoint
from .engine import DeviceTotals, Run, build_data, build_model, build_run, train_step
from .metrics import Sums
from .models import set_train_mode
from .recipe import hold_backbone
from .run_folder import config_dict, run_kind
from .trained import Trained

_logger = logging.getLogger(__name__)

RULE = "valley"  # the suggestion `suggestion` returns: fastai's default
RULES = {
    "valley": "the longest valley of the smoothed loss (its longest decreasing subsequence, start to end), the "
              "point at start + int(L/3) + int(L/6) with L = end - start (fastai's valley)",
    "steep": "the steepest descent of the smoothed loss against log(rate) (fastai's steep)",
    "minimum": "the rate of the lowest smoothed loss divided by 10 (fastai's minimum)",
}
BETA = 0.98  # the smoothing of fastai's AvgSmoothLoss
DIVERGE = 4.0  # stop when the smoothed loss exceeds this many times its lowest value (fastai's LRFinder)
SKIP_END = 5  # rows left out at the end before suggesting (fastai's lr_find and plot_lr_find)
MIN_STEPS = 10

CSV, JSON, FIGURE = "lr_find.csv", "lr_find.json", "lr_find"  # the figure is FIGURE + ".png"
OWN_FILES = (CSV, JSON, FIGURE + ".png", LOCK_NAME)


@dataclass
class LRFinderResult:
    """A range test's curve (one row per step) and the rates suggested from it.

    Attributes:
        rates, losses, smoothed: per step, the head's rate, the step's loss and the smoothed loss.
        suggestions: {rule: rate} for valley, steep and minimum (empty when too few rows were left).
        points: {rule: (rate, smoothed loss)}: where each rule points on the curve (`minimum`'s is the minimum
            itself, before the division by 10), for the figure.
        stopped: "steps" (all were run), "diverged" or "non-finite loss".
        backbone_held: whether the backbone was held still (the head-only warm-up's phase).
        settings: steps, start_lr, end_lr, beta, diverge factor and the config (`config_dict`).
        output_dir: the folder of lr_find.csv and lr_find.json; figure: the figure's path, if one was drawn.
    """

    rates: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestions: dict[str, float]
    points: dict[str, tuple[float, float]]
    stopped: str
    backbone_held: bool
    settings: dict = field(default_factory=dict)
    output_dir: str = ""
    figure: str | None = None

    @property
    def suggestion(self) -> float | None:
        """The rate the default rule (`RULE`, fastai's valley) suggests, or None."""
        return self.suggestions.get(RULE)

    def summary(self) -> dict:
        """The JSON-ready result without the curve: what lr_find.json holds and the command prints."""
        return {"suggestion": self.suggestion, "rule": RULE, "suggestions": self.suggestions, "rules": RULES,
                "current_lr": self.settings.get("config", {}).get("lr"), "backbone_held": self.backbone_held,
                "steps_run": len(self.rates), "stopped": self.stopped, "output_dir": self.output_dir,
                "figure": self.figure, **{k: v for k, v in self.settings.items() if k != "config"},
                "config": self.settings.get("config")}


# ----------------------------------------------------------------------------------------------------------------
# The maths: smoothing and fastai's suggestion rules (pure functions of the curve)


def smooth(losses: Sequence[float], beta: float = BETA) -> list[float]:
    """fastai's AvgSmoothLoss: an exponential moving average debiased by 1 - beta^(i+1); a NaN stays NaN."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def valley(rates: np.ndarray, losses: np.ndarray) -> tuple[float, int]:
    """fastai's `valley`: the longest decreasing subsequence of `losses` ending at `end` (length L, starting
    L before it), and the rate at start + int((end - start)/3) + int((end - start)/6). Returns (rate, index)."""
    n = len(losses)
    lds = [1] * n  # lds[i]: the longest decreasing subsequence ending at i
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end, max_start = i, i - lds[i]
    sections = (max_end - max_start) / 3
    idx = max(0, max_start + int(sections) + int(sections / 2))  # fastai's start can be -1; a tiny valley stays at 0
    return float(rates[idx]), idx


def steep(rates: np.ndarray, losses: np.ndarray) -> tuple[float, int]:
    """fastai's `steep`: the rate where d(loss)/d(log rate) is the most negative. Returns (rate, index)."""
    grads = np.diff(losses) / np.diff(np.log(rates))
    idx = int(np.argmin(grads))
    return float(rates[idx]), idx


def minimum(rates: np.ndarray, losses: np.ndarray) -> tuple[float, int]:
    """fastai's `minimum`: a tenth of the rate at the lowest loss. Returns (rate / 10, index of the lowest loss)."""
    idx = int(np.argmin(losses))
    return float(rates[idx]) / 10, idx


def suggest(rates: Sequence[float], smoothed: Sequence[float], steps: int
            ) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """The three rules on the curve as fastai's `lr_find` feeds them: rows steps // 10 to -5, cut at the first NaN.

    Args:
        rates, smoothed: the curve, one value per step run.
        steps: the steps asked for (fastai's num_it: the tenth left out is of these, not of the steps run).

    Returns:
        ({rule: suggested rate}, {rule: (rate, smoothed loss) on the curve}); both empty when fewer than 3 rows
        are left (a test that diverged at once).
    """
    lo, hi = steps // 10, len(rates) - SKIP_END
    r, s = np.asarray(rates[lo:hi], dtype=float), np.asarray(smoothed[lo:hi], dtype=float)
    nan = np.flatnonzero(~np.isfinite(s))
    if len(nan):
        r, s = r[: nan[0]], s[: nan[0]]
    if len(r) < 3:
        return {}, {}
    suggestions, points = {}, {}
    for name, rule in (("valley", valley), ("steep", steep), ("minimum", minimum)):
        rate, idx = rule(r, s)
        suggestions[name], points[name] = rate, (float(r[idx]), float(s[idx]))
    return suggestions, points


# ----------------------------------------------------------------------------------------------------------------
# The range test


class RangeSchedule:
    """Stands in for the run's timm scheduler: `step_update(t)` sets every group's lr to rates[t] x its lr_scale
    (0 for a held backbone), as the trainer's scheduler sets schedule(t) x lr_scale."""

    def __init__(self, optimizer: torch.optim.Optimizer, rates: Sequence[float]):
        self.optimizer, self.rates = optimizer, list(rates)

    def step_update(self, num_updates: int) -> None:
        rate = self.rates[min(num_updates, len(self.rates) - 1)]
        for group in self.optimizer.param_groups:
            group["lr"] = rate * group.get("lr_scale", 1.0)


def check_output(folder: str | Path) -> Path:
    """The finder's folder: new, empty, or an earlier finder's (it holds lr_find.json). Never a run's.

    Raises:
        UserError: `folder` is a file, holds a run of any kind (`run_folder.run_kind`), or holds other files and no
            earlier finder's result.
    """
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output-dir {out} is a file. Give a new folder for the finder's curve.")
    if not out.is_dir():
        return out
    kind = run_kind(out)
    if kind:
        raise UserError(f"--output-dir {out} holds a {kind}: the finder never writes into a run. Give a new "
                        "folder, e.g. runs/lr-find.")
    others = sorted(p.name for p in out.iterdir() if p.name not in OWN_FILES)
    if others and not (out / JSON).is_file():
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise UserError(f"--output-dir {out} already holds other files ({shown}) and no earlier finder's {JSON}. "
                        "Give a new folder: the finder writes only its curve, its result and its figure there.")
    return out


def _check_settings(cfg: TrainConfig, steps: int, start_lr: float, end_lr: float) -> None:
    if not isinstance(steps, int) or steps < MIN_STEPS:
        raise UserError(f"--steps must be at least {MIN_STEPS} (the suggestion leaves out the first tenth and the "
                        f"last {SKIP_END}), got {steps!r}. fastai runs 100.")
    if not (0 < start_lr < end_lr and math.isfinite(end_lr)):
        raise UserError(f"--start-lr and --end-lr must be positive with start < end, got {start_lr!r} and "
                        f"{end_lr!r} (fastai's range is 1e-7 to 10).")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("lr-find runs in one process: start it without torchrun (the suggestion is the same).")


def _start_state(cfg: TrainConfig) -> dict | None:
    """The checkpoint a new stage would start from: `--resume PATH` (a folder gives its last.pt), never "auto" (the
    finder runs before a run, and a run it would continue is not what a new run starts from). Read only:
    `checkpoint.load_resume` may set a damaged last.pt aside, which would write into the run's folder."""
    if cfg.resume in (None, "auto"):
        return None
    state = checkpoint.load(cfg.resume, prefer=checkpoint.LAST)
    if state["config"].get("backbone") != cfg.backbone:
        raise UserError(f"--resume {cfg.resume} is a {state['config'].get('backbone')} checkpoint, but --backbone "
                        f"is {cfg.backbone}.")
    return state


def find_lr(cfg: TrainConfig, output_dir: str | Path, *, steps: int = 100, start_lr: float = 1e-7,
            end_lr: float = 10.0, teachers: Sequence[Trained] = (),
            init: Callable[[], tuple[dict[str, torch.Tensor], list[str]]] | None = None,
            figure: Callable[[LRFinderResult, Path], Path | None] | None = None) -> LRFinderResult:
    """Run the range test on `cfg`'s model and data, and write lr_find.csv and lr_find.json into `output_dir`.

    Like `engine.fit`, the runs that `cfg.teacher` and `cfg.init_from` name come in loaded (`helpers.lr_find` loads
    them with `helpers.use.runs`); `cfg.output_dir` is not touched.

    Args:
        output_dir: the finder's own folder (see `check_output`), locked while it writes.
        steps: optimizer steps at most (fastai: 100); start_lr, end_lr: the range of the head's rate.
        teachers: the trained models of `cfg.teacher`; init: returns (weights, class names) of `cfg.init_from`.
        figure: draws the result into the folder (called while it is locked); returns the file's path.

    Returns:
        The curve and the suggestions.

    Raises:
        UserError: bad settings, a run's folder, missing teachers or init weights.
    """
    if bool(cfg.teacher) != bool(teachers) or (cfg.init_from is not None) != (init is not None):
        raise ValueError("find_lr takes the runs of cfg.teacher and cfg.init_from loaded (teachers=, init=): call "
                         "helpers.lr_find(cfg, output_dir=...), which loads them.")
    cfg = validate(cfg)
    _check_settings(cfg, steps, start_lr, end_lr)
    out = check_output(output_dir)
    state = _start_state(cfg)
    with run_lock(out, f"lr-find --output-dir {out}"):
        seed_everything(cfg.seed)
        device = get_device(cfg.device)
        splits = load_splits(cfg.dataset, cfg.data_dir, val_fraction=cfg.val_fraction,
                             test_fraction=cfg.test_fraction, seed=cfg.seed, download=cfg.download)
        model, dtype = build_model(cfg, splits.class_names, state, device, init)
        data = build_data(cfg, splits, model, device, dtype, DistInfo(), None)
        run = build_run(cfg, model, data, device, dtype, DistInfo(), teachers)
        if run.steps_per_epoch == 0:
            raise UserError(f"{cfg.data_dir} has no training photos: the finder needs at least one batch.")
        held = cfg.head_warmup_epochs > 0
        hold_backbone(run.optimizer, held)
        rates = np.geomspace(start_lr, end_lr, steps).tolist()
        run.scheduler, run.nan_policy = RangeSchedule(run.optimizer, rates), "skip"  # a NaN ends the test
        _logger.info("lr-find: %d steps from %.1e to %.1e (the head's rate), backbone %s, batch %d", steps, start_lr,
                     end_lr, "held (the head-only warm-up's phase)" if held else "trained", data.batch_size)
        losses, stopped = range_test(run, data.train_loader, rates)
        smoothed = smooth(losses)
        suggestions, points = suggest(rates[: len(losses)], smoothed, steps)
        settings = {"steps": steps, "start_lr": start_lr, "end_lr": end_lr, "beta": BETA, "diverge": DIVERGE,
                    "config": config_dict(cfg)}
        result = LRFinderResult(rates[: len(losses)], losses, smoothed, suggestions, points, stopped, held, settings,
                                str(out))
        _write_curve(out / CSV, result)
        if figure is not None:
            path = figure(result, out)
            result.figure = str(path) if path else None
        atomic_write_text(out / JSON, json.dumps(result.summary(), indent=2))
    _log_result(result)
    return result


@device_code
def range_test(run: Run, loader: torch.utils.data.DataLoader, rates: Sequence[float]) -> tuple[list[float], str]:
    """Train steps at `rates` (set by `run.scheduler`, a `RangeSchedule`) until all ran, the smoothed loss
    diverges or the loss is NaN/Inf. Returns (the loss of each step run, why it stopped)."""
    set_train_mode(run.raw_model, run.frozen_backbone)
    run.scheduler.step_update(run.num_updates)
    losses: list[float] = []
    avg, best, epoch = 0.0, math.inf, 0
    bar = progress_bar(total=len(rates), desc="lr-find", leave=False)
    try:
        while True:
            loader.sampler.set_epoch(epoch)
            batches = iter(loader)
            for step in range(run.steps_per_epoch):
                totals = DeviceTotals(Sums(), run.device)
                train_step(run, batches, epoch, step, totals)
                n, loss_sum, _, _ = totals.state()  # one host sync per step: the stop needs the loss
                losses.append(loss_sum / n if n else math.nan)
                bar.update(1)
                if not n:
                    return losses, "non-finite loss"
                avg = BETA * avg + (1 - BETA) * losses[-1]
                smoothed = avg / (1 - BETA ** len(losses))
                best = min(best, smoothed)
                bar.set_postfix(loss=f"{smoothed:.3f}", lr=f"{rates[len(losses) - 1]:.1e}")
                if smoothed > DIVERGE * best:
                    return losses, "diverged"
                if len(losses) == len(rates):
                    return losses, "steps"
            epoch += 1
    finally:
        bar.close()


def _write_curve(path: Path, result: LRFinderResult) -> None:
    rows = ["step,rate,loss,smoothed"]
    rows += [f"{i + 1},{r:.6e},{loss:.6f},{s:.6f}"
             for i, (r, loss, s) in enumerate(zip(result.rates, result.losses, result.smoothed, strict=True))]
    atomic_write_text(path, "\n".join(rows) + "\n")


def _log_result(result: LRFinderResult) -> None:
    how = {"steps": "ran all its steps", "diverged": "stopped when the loss diverged",
           "non-finite loss": "stopped at a NaN/Inf loss"}[result.stopped]
    if not result.suggestions:
        _logger.warning("lr-find %s after %d steps, too early to suggest a rate: lower --start-lr or --end-lr, or "
                        "give more --steps. The curve is in %s.", how, len(result.rates), result.output_dir)
        return
    s = result.suggestions
    _logger.info("lr-find %s after %d steps: valley %.2e (suggested), steep %.2e, minimum/10 %.2e; config lr "
                 "%.2e; outputs in %s", how, len(result.rates), s["valley"], s["steep"], s["minimum"],
                 result.settings["config"]["lr"], result.output_dir)
