"""The command line: `python -m helpers <command> [flags]`, a thin layer over the package's functions.

    python -m helpers train --dataset food-101 --data-dir data/food-101 --backbone efficientnet_b3 \\
        --batch-size 16 --epochs 150 --image-size 300 --device mps --output-dir runs/b3
    python -m helpers evaluate --checkpoint runs/b3 --dataset food-101 --data-dir data/food-101 --split test
    python -m helpers ensemble --models runs/b3 runs/r50 --dataset food-101 --data-dir data/food-101

The train flags are generated from `TrainConfig`: every field is a flag, its comment is the help text.
Problems with the input end with one paragraph on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable

from ..base import config as config_module
from ..base.config import TrainConfig, make_config
from ..base.errors import UserError
from ..course import runner
from ..data import check_data, prepare
from ..use import export, features, predict, probe
from . import bench, doctor

_logger = logging.getLogger("helpers")

# Modules with an `add_command(subparsers)` function; their command's handler is set with set_defaults(func=...)
# and takes the parsed argparse.Namespace. Keep their imports light: heavy imports go inside the handler.
EXTRA_COMMANDS = (bench, prepare, check_data, runner, features, probe, doctor, predict, export)


def _field_docs() -> tuple[dict[str, str], dict[str, str]]:
    """Help text and section of each TrainConfig field, read from the comments in its source."""
    docs, sections, section = {}, {}, "settings"
    for line in inspect.getsource(TrainConfig).splitlines():
        header = re.match(r"\s*# --- (.+) ---", line)
        if header:
            section = header.group(1)
            continue
        m = re.match(r"\s+(\w+): [^=]+=.*?(?:#\s*(.*))?$", line)
        if m:
            docs[m.group(1)] = (m.group(2) or "").replace("%", "%%")
            sections[m.group(1)] = section
    return docs, sections


def _int_or_auto(text: str) -> int | str:
    return "auto" if text.lower() == "auto" else int(text)


def _positive_or_none(text: str) -> int | None:
    return None if text.lower() in ("none", "auto") else int(text)


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, grouped like the dataclass; defaults are left to the dataclass."""
    docs, sections = _field_docs()
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(TrainConfig):
        group = groups.setdefault(sections[f.name], parser.add_argument_group(sections[f.name]))
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{docs.get(f.name, '')} (default: {f.default!r})"
        kwargs: dict = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
        if f.type in ("bool", "bool | None"):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif f.type == "int":
            group.add_argument(flag, type=int, metavar="N", **kwargs)
        elif f.type == "float":
            group.add_argument(flag, type=float, metavar="X", **kwargs)
        elif f.type == "int | str":
            group.add_argument(flag, type=_int_or_auto, metavar="N|auto", **kwargs)
        elif f.type == "int | None":
            group.add_argument(flag, type=_positive_or_none, metavar="N", **kwargs)
        elif f.type == "float | None":
            group.add_argument(flag, type=float, metavar="X", **kwargs)
        elif f.type.startswith("tuple"):
            group.add_argument(flag, nargs="+", metavar="RUN", **kwargs)
        else:
            choices = config_module.CHOICES.get(f.name)
            group.add_argument(flag, choices=choices, metavar="|".join(choices) if choices else "TEXT", **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m helpers", description="Food-101 workbook: train, evaluate, ...")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a classifier", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_argument("--config", help="YAML file of settings; flags override it")
    add_train_flags(train)
    train.set_defaults(func=_train)

    ev = sub.add_parser("evaluate", help="evaluate a trained model on a split; prints a JSON line last")
    ev.add_argument("--checkpoint", required=True, help="run folder (uses best.pt) or checkpoint file")
    _add_data_flags(ev)
    ev.add_argument("--image-size", type=int, help="evaluate at this resolution instead of the training one")
    ev.add_argument("--use-ema", action="store_true", help="use the EMA weights of a --model-ema run")
    ev.add_argument("--predictions", help="write per-image predictions (path, true, pred, probabilities) to this CSV")
    ev.set_defaults(func=_evaluate)

    en = sub.add_parser("ensemble", help="average the softmax of several trained models; prints a JSON line last")
    en.add_argument("--models", nargs="+", required=True, help="run folders or checkpoints")
    en.add_argument("--test-dir", help="a folder of class folders to evaluate on (same as --dataset imagefolder)")
    _add_data_flags(en, required=False)
    en.add_argument("--predictions", help="write the ensemble's per-image predictions to this CSV")
    en.set_defaults(func=_ensemble)

    _add_lr_find(sub)
    for module in EXTRA_COMMANDS:  # each module adds its own sub-command: add_command(subparsers)
        module.add_command(sub)
    return parser


def _add_lr_find(sub: argparse._SubParsersAction) -> None:
    """`lr-find`: every train flag, with --output-dir the finder's own folder (it replaces the train flag)."""
    finder = sub.add_parser(
        "lr-find", conflict_handler="resolve", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="a learning-rate range test (fastai's lr_find) on the train settings; prints a JSON line last",
        description="An exponential range test through the real train step (the same optimizer groups, backbone "
        "ratio, frozen BatchNorm and augmentation; mixup, EMA and a teacher only when asked). With "
        "--head-warmup-epochs > 0 (the default) the backbone is held still, as in the first epoch of train. It "
        "stops when the smoothed loss exceeds 4x its lowest and suggests rates by fastai's rules: valley (the "
        "suggestion), steep and minimum/10. It writes lr_find.csv, lr_find.json and lr_find.png into its own "
        "--output-dir only.")
    finder.add_argument("--config", help="YAML file of train settings; flags override it")
    add_train_flags(finder)
    group = finder.add_argument_group("the range test")
    group.add_argument("--output-dir", required=True, help="the finder's own folder: new, or an earlier "
                       "finder's (never a run's)")
    group.add_argument("--steps", type=int, default=100, help="optimizer steps at most (fewer if it diverges)")
    group.add_argument("--start-lr", type=float, default=1e-7, help="the head's rate at the first step")
    group.add_argument("--end-lr", type=float, default=10.0, help="the head's rate at the last step")
    finder.set_defaults(func=_lr_find)


def _add_data_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--dataset", choices=config_module.CHOICES["dataset"], default="food-101")
    p.add_argument("--data-dir", required=required)
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.add_argument("--tta", type=int, default=1, help="test-time augmentation views (1 = plain evaluation)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=-1)
    p.add_argument("--device", choices=config_module.CHOICES["device"], default="auto")


def _train(args: argparse.Namespace) -> dict:
    from ..use.runs import train  # fit, with the runs of --teacher and --init-from loaded

    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "func", "config", "verbose")}
    return train(make_config(overrides, yaml_path=args.config))


def _lr_find(args: argparse.Namespace) -> dict:
    from .. import lr_find

    finder = ("output_dir", "steps", "start_lr", "end_lr")
    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("command", "func", "config", "verbose", *finder)}
    result = lr_find(make_config(overrides, yaml_path=args.config), output_dir=args.output_dir, steps=args.steps,
                     start_lr=args.start_lr, end_lr=args.end_lr)
    return result.summary()


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise UserError(f"--{name} must be a positive integer, got {value}.")


def _evaluate(args: argparse.Namespace) -> dict:
    from ..use.inference import evaluate

    _check_positive("image-size", args.image_size)
    _check_tta(args.tta)
    return evaluate(args.checkpoint, dataset=args.dataset, data_dir=args.data_dir, split=args.split, tta=args.tta,
                    image_size=args.image_size, batch_size=args.batch_size, device=args.device, use_ema=args.use_ema,
                    predictions=args.predictions, num_workers=args.num_workers)


def _check_tta(tta: int) -> None:
    if not 1 <= tta <= 6:
        raise UserError(f"--tta takes 1 to 6 views (plain, mirrored, and two more scales with mirrors), got {tta}.")


def _ensemble(args: argparse.Namespace) -> dict:
    from ..use.inference import TEST_FOLDER, ensemble

    _check_tta(args.tta)
    dataset, data_dir = args.dataset, args.data_dir
    if args.test_dir:
        dataset, data_dir = TEST_FOLDER, args.test_dir
    if not data_dir:
        raise UserError("Give --test-dir DIR, or --dataset and --data-dir.")
    return ensemble(args.models, dataset=dataset, data_dir=data_dir, split=args.split, tta=args.tta,
                    batch_size=args.batch_size, device=args.device, predictions=args.predictions,
                    num_workers=args.num_workers)


def check_args(args: argparse.Namespace) -> None:
    """Check the parsed arguments of a sub-command before it runs: numbers finite, paths not empty, and the flags
    it shares with `train` in the same ranges (`config.check_setting`: --val-fraction, --max-iter, sizes...).

    Raises:
        UserError: one paragraph naming the flag.
    """
    for name, value in vars(args).items():
        if name in ("func", "command", "verbose"):
            continue
        flag = "--" + name.replace("_", "-")
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                raise UserError(f"{flag} must be a finite number, got {v}.")
            if isinstance(v, str) and not v.strip():
                raise UserError(f"{flag} is empty. Give a value (a path or a name), or leave the flag out.")
            config_module.check_setting(name, v)


def _interrupt_on_sigterm() -> None:
    """SIGTERM (a scheduler's or `kill`'s polite stop) ends the run like Ctrl-C: temporary files removed, the
    last checkpoint kept, exit code 130."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None, run: Callable | None = None) -> int:
    """Entry point. Returns the exit code, a contract for scripts and retry loops:

    - 0: done;
    - 2: the user's input or environment (bad flags or data, a full or read-only disk, a busy output folder, a
      NaN loss): one paragraph on stderr; retrying unchanged fails the same way;
    - 130: interrupted (Ctrl-C, SIGTERM): the last checkpoint is kept; continue with --resume auto;
    - 1: a bug: the traceback is printed.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    _interrupt_on_sigterm()
    try:
        if args.command != "train":
            check_args(args)
        if args.command != "notebooks":  # commands that load data in workers (it imports torch)
            from ..data.loaders import raise_open_file_limit

            raise_open_file_limit()
        result = args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # a command may say how it continues (run-notebooks: --resume DIR)
        print(f"interrupted: {exc}" if str(exc) else "interrupted: no temporary file is left and the last checkpoint "
              "is kept; continue with the same command and --resume auto", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the exit-code contract: environment failures are 2, bugs 1
        from ..base.io import as_write_error

        error = as_write_error(exc, getattr(exc, "filename", None) or "a file")
        if error is None:
            traceback.print_exc()
            print("error: this is a bug (exit code 1): please report the traceback above.", file=sys.stderr)
            return 1
        print(f"error: {error}", file=sys.stderr)
        return 2
    if result is not None and os.environ.get("RANK", "0") == "0":  # under torchrun: one line, from rank 0
        print(json.dumps(result), flush=True)
    return 0
