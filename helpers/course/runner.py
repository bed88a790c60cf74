"""`python -m helpers run-notebooks`: execute the course's notebooks in order with papermill, headless.

    python -m helpers run-notebooks --profile demo                   # the whole course on the tiny set
    python -m helpers run-notebooks --profile full --only 01,02 -p device cuda
    python -m helpers run-notebooks --resume                          # continue the newest unfinished sequence
    python -m helpers run-notebooks --rehearse                        # the full profile's chain in minutes
    python -m helpers run-notebooks --rehearse --profile medium       # the medium profile's chain

Each sequence gets a run folder, runs/notebooks/<profile>-<YYYYmmdd-HHMMSS>/ unless --out names one:

    executed/<notebook>.ipynb   the executed notebooks, with their outputs (and the traceback of a failure)
    logs/<notebook>.log         everything each notebook printed, cell by cell
    figures/*.png               the figures the notebooks saved
    models/, predictions/       the trained runs and the per-image predictions
    state.json                  what ran, for how long, and what failed (read by --resume)
    sources/<notebook>.ipynb    a notebook whose .py was edited after its .ipynb, as it ran (`pairing`: the file
                                of a pair edited last runs, as `jupytext --sync` chooses it)

Every notebook gets the parameters `profile` and `output_dir` (the run folder), and each `-p NAME VALUE`
(VALUE is read as YAML: 1 is a number, true a bool, "[1, 2]" a list, "{epochs: 2}" a mapping, e.g. for a
notebook's `overrides`). `--rehearse` runs the full profile's exact chain (its backbones, every cross-notebook
dependency, the ensemble and the teacher) with random weights, 2 steps per epoch, at most 2 epochs and a quarter
of the image size, on the 101-class thumbnails in data/food-101-thumbs: a wiring bug shows in minutes, not at
notebook 08 of an overnight run. A failure stops the sequence with a
summary naming the notebook and the cell; `--resume` continues with that notebook, whose training resumes from
its last checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..base.errors import UserError
from .course import ENV_FOLDER, ENV_LEDGER, ENV_REHEARSE, literals_of
from .execute import KERNEL, NotebookFailure, WarmKernel, _say, check_kernel, execute
from .pairing import Resolved, resolve

_logger = logging.getLogger(__name__)

STATE = "state.json"
# Parameters the runner gives the notebooks another way (Course reads them from the kernel's environment).
RUNNER_FLAGS = {"profile": "--profile", "output_dir": "--out DIR", "ledger": "--ledger FILE", "rehearse": "--rehearse"}


# One figure of each kind, copied by --copy-figures as the repository's examples (figures/).
EXAMPLE_FIGURES = ("00_class_samples", "01_lr_find", "01_training_curves", "01_confusion_matrix", "01_top_confusions",
                   "01_failures", "02_compare", "03_augmentation_preview", "03_advanced_steps", "03_training_curves", "04_mix_preview",
                   "05_training_curves", "06_tta_views", "06_tta_gain", "06_changes", "07_compare",
                   "08_ensemble_vs_members", "09_student_vs_teacher", "10_probe_l2_sweep", "10_probe_batch",
                   "10_routes", "11_my_photos", "11_pytorch_vs_onnx", "12_roadmap_table", "12_roadmap")


def add_command(subparsers: Any) -> None:
    """Add the `run-notebooks` sub-command to the CLI."""
    from .course import PROFILES

    p = subparsers.add_parser(
        "run-notebooks", help="run the course's notebooks headlessly (papermill) into a run folder",
        description=__doc__.split("\n\n")[1] if __doc__ else None, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=tuple(PROFILES), default=None,
                   help="demo (tiny set, CPU minutes; the default), medium (10%% of Food-101, an evening on a Mac), "
                        "full (Food-101, the plan's settings) or ci")
    p.add_argument("--rehearse", action="store_true",
                   help="the full profile's chain (or --profile medium's) with random weights, 2 steps a run and "
                        "small images, on the 101-class thumbnails (minutes): run it before a night of that profile")
    p.add_argument("--only", metavar="NN,NN", help="comma-separated notebook numbers or names, e.g. 01,02 or 06_tta")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   dest="parameters", help="a notebook parameter for every notebook (repeatable)")
    p.add_argument("--out", metavar="DIR", help="the run folder (default runs/notebooks/<profile>-<time>)")
    p.add_argument("--ledger", metavar="FILE", help="the results ledger the notebooks append to (default runs/ledger.csv)")
    p.add_argument("--resume", nargs="?", const="latest", metavar="DIR",
                   help="continue an interrupted or failed sequence (default: the newest unfinished one)")
    p.add_argument("--notebooks", metavar="DIR", help="where the notebooks are (default: <project>/notebooks)")
    p.add_argument("--kernel", default=None,
                   help=f"Jupyter kernel name (default: the notebook's own, {KERNEL!r}, which `make install` registers)")
    p.add_argument("--cell-timeout", type=int, default=None, metavar="S", help="seconds one cell may run (default none)")
    p.add_argument("--copy-figures", metavar="DIR",
                   help="when every notebook succeeded, copy one figure of each kind into DIR as smaller PNGs (the "
                        "repository's figures/ are made this way)")
    p.set_defaults(func=run_command)


# ----------------------------------------------------------------------------------------------------------------
# The sequence and its state


@dataclasses.dataclass
class Sequence:
    """A sequence of notebooks executed into one run folder; saved as state.json."""

    folder: Path
    profile: str
    notebooks: list[str]
    parameters: dict[str, Any]
    status: dict[str, dict[str, Any]]  # notebook -> {state: pending|running|done|failed|interrupted, seconds, ...}
    created: str
    ledger: str | None = None  # --ledger (None: the notebooks' default, runs/ledger.csv)
    rehearse: bool = False  # --rehearse

    def save(self) -> None:
        data = dataclasses.asdict(self)
        data["folder"] = str(self.folder)
        tmp = self.folder / f".{STATE}.tmp"
        tmp.write_text(json.dumps(data, indent=2, default=str))
        os.replace(tmp, self.folder / STATE)

    @classmethod
    def load(cls, folder: Path) -> Sequence:
        data = json.loads((folder / STATE).read_text())
        data["folder"] = folder
        params = data.get("parameters", {})  # sequences started before these were runner flags
        data.setdefault("ledger", params.pop("ledger", None))
        data.setdefault("rehearse", bool(params.pop("rehearse", False)))
        params.pop("output_dir", None)
        return cls(**data)

    def environment(self) -> dict[str, str | None]:
        """What the notebooks' kernel is told instead of parameters (`Course` reads it): the run folder, the
        ledger (None: left as the environment has it) and the rehearsal."""
        return {ENV_FOLDER: str(self.folder), ENV_LEDGER: self.ledger or os.environ.get(ENV_LEDGER),
                ENV_REHEARSE: "1" if self.rehearse else None}

    def pending(self) -> list[str]:
        return [n for n in self.notebooks if self.status.get(n, {}).get("state") != "done"]


def parse_value(text: str, name: str = "NAME") -> Any:
    """A -p value as YAML: numbers, booleans, null, lists, mappings, and plain words as strings.

    Raises:
        UserError: the value is not valid YAML (an unclosed mapping or list, say), naming the flag.
    """
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = str(getattr(exc, "problem", None) or exc).strip()
        raise UserError(f"-p {name} {text!r} is not valid YAML ({problem}): nothing ran. Write a mapping as "
                        "'{epochs: 1, lr: 0.001}', a list as '[1, 2]'; quote a text that holds : { } [ ] or # as "
                        "'\"a: b\"'.") from None


def find_notebooks(folder: Path) -> list[Path]:
    """The course's notebooks in a folder: NN_name.ipynb, in order, the results notebook (NN_results) last: it
    summarises the others, including notebooks numbered after it (10_beyond_95)."""
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise UserError(f"Notebook folder {folder} {what}. Give --notebooks DIR.")
    found = sorted((p for p in folder.glob("*.ipynb") if re.match(r"^\d\d_", p.name)),
                   key=lambda p: (p.stem.endswith("_results"), p.name))
    if not found:
        raise UserError(f"{folder} holds no notebooks named NN_name.ipynb.")
    return found


def select(names: list[str], only: str | None) -> list[str]:
    """The notebooks `--only` picks (numbers like 01 or full names), in course order.

    Raises:
        UserError: a token that matches no notebook, naming the notebooks there are.
    """
    if only is None:
        return list(names)
    tokens = [t.strip() for t in only.split(",") if t.strip()]
    if not tokens:
        raise UserError(f"--only {only!r} names no notebook. Give numbers or names, e.g. --only 01,02; leave the "
                        "flag out to run them all.")
    chosen = set()
    for token in tokens:
        hits = [n for n in names if n == token or n.startswith(f"{token}_") or n.split("_", 1)[0] == token.zfill(2)]
        if not hits:
            raise UserError(f"--only {token!r} matches no notebook; there are {', '.join(names)}.")
        chosen.update(hits)
    return [n for n in names if n in chosen]


def _new_folder(root: Path, profile: str) -> Path:
    base = root / "runs" / "notebooks" / f"{profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder, i = base, 1
    while folder.exists():
        i += 1
        folder = base.with_name(f"{base.name}-{i}")
    return folder


def _latest_unfinished(root: Path) -> Path:
    candidates = sorted((root / "runs" / "notebooks").glob(f"*/{STATE}"), key=lambda p: p.stat().st_mtime,
                        reverse=True)
    for state in candidates:
        if Sequence.load(state.parent).pending():
            return state.parent
    raise UserError(f"No unfinished notebook sequence in {root / 'runs' / 'notebooks'} to resume. "
                    "Start one with python -m helpers run-notebooks.")


def required_runs(source: Any, profile: str, *, name: str | None = None) -> list[tuple[str, str]]:
    """The (notebook, run) pairs of other notebooks that a notebook needs in a profile, read from it without
    running it: `require("NN_slug", "run")` calls, and (notebook, run) pairs in its parameters under the
    profile's key (e.g. `MEMBERS = {"demo": [("07_high_resolution", "hires"), ...]}`).

    Args:
        source: the notebook that runs (as `pairing.resolve` finds it), or its file (then resolved).
        name: the notebook's name, when `source` is a notebook already read.
    """
    import ast

    import jupytext

    from .parameters import parameters, read_notebook

    notebook = read_notebook(source)
    name = name or Path(source).stem

    def pair(values: list) -> tuple[str, str] | None:
        if len(values) == 2 and all(isinstance(v, str) for v in values) and re.match(r"^\d\d_", values[0]):
            return values[0], values[1]
        return None

    found: list[tuple[str, str]] = []
    for node in ast.walk(ast.parse(jupytext.writes(notebook, fmt="py:percent"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "require":
            hit = pair([a.value for a in node.args if isinstance(a, ast.Constant)])
            found += [hit] if hit else []

    def walk(value: Any) -> None:
        if isinstance(value, (tuple, list)):
            hit = pair(list(value))
            if hit:
                found.append(hit)
                return
            for v in value:
                walk(v)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)

    key = literals_of(profile)
    for value in parameters(notebook).values():
        if isinstance(value, dict) and key in value:
            walk(value[key])
    return [p for i, p in enumerate(found) if p not in found[:i] and p[0] != name]


def _check_requirements(sequence: Sequence, sources: dict[str, Any]) -> None:
    """Fail early when a selected notebook needs a model that neither an earlier selected notebook nor an earlier
    sequence in this folder makes."""
    coming: set[str] = set()
    for name in sequence.notebooks:
        if sequence.status.get(name, {}).get("state") == "done":
            coming.add(name)
            continue
        for notebook, run in required_runs(sources[name], sequence.profile, name=name):
            ready = (sequence.folder / "models" / notebook / run / "best.pt").is_file()
            if notebook not in coming and not ready:
                raise UserError(
                    f"{name} needs the {run!r} model of {notebook}, which this sequence does not train and "
                    f"{sequence.folder} does not hold. Add {notebook[:2]} to --only, or run in a folder where it "
                    "ran (--out DIR or --resume DIR)."
                )
        coming.add(name)


# ----------------------------------------------------------------------------------------------------------------
# Running


def run_command(args: argparse.Namespace) -> dict:
    """The handler of `run-notebooks`: build or load the sequence, run what is pending, print a summary."""
    from .course import project_root

    root = project_root()
    folder_nb = Path(args.notebooks) if args.notebooks else root / "notebooks"
    sources = {p.stem: p for p in find_notebooks(folder_nb)}
    parameters = {name: parse_value(value, name) for name, value in args.parameters}
    if args.rehearse:
        if args.profile not in (None, "full", "medium"):
            raise UserError("--rehearse rehearses the full profile (or --profile medium): not demo or ci, which "
                            "run as they are.")
        args.profile = args.profile or "full"
    for reserved, flag in RUNNER_FLAGS.items():
        if reserved in parameters:
            raise UserError(f"-p {reserved}: {reserved} is not a notebook parameter, the runner sets it: use {flag}.")
    if args.resume:
        if args.only or args.out:
            raise UserError("--resume continues a sequence as it was started: leave out --only and --out.")
        folder = _latest_unfinished(root) if args.resume == "latest" else Path(args.resume)
        if not (folder / STATE).is_file():
            raise UserError(f"{folder} is not a notebook run folder (it has no {STATE}).")
        sequence = Sequence.load(folder)
        if args.profile and args.profile != sequence.profile:
            raise UserError(f"{folder} ran the {sequence.profile} profile; resume it without --profile.")
        sequence.parameters.update(parameters)
        sequence.ledger = args.ledger or sequence.ledger
        missing = [n for n in sequence.notebooks if n not in sources]
        if missing:
            raise UserError(f"The notebooks {', '.join(missing)} of {folder} are not in {folder_nb}.")
    else:
        profile = args.profile or "demo"
        if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
            raise UserError(f"--out {args.out} is a file, not a folder: give a new or existing folder for the run.")
        folder = Path(args.out) if args.out else _new_folder(
            root, ("rehearsal" + ("" if profile == "full" else f"-{profile}")) if args.rehearse else profile)
        if (folder / STATE).exists():
            raise UserError(f"{folder} already holds a notebook sequence. Continue it with --resume {folder}, "
                            "or choose another --out.")
        names = select(list(sources), args.only)
        sequence = Sequence(folder=folder, profile=profile, notebooks=names, parameters=parameters,
                            status={n: {"state": "pending"} for n in names}, created=time.strftime("%Y-%m-%d %H:%M:%S"),
                            ledger=args.ledger, rehearse=args.rehearse)
    resolved = {name: resolve(sources[name]) for name in sequence.pending()}  # what the learner edited last
    check_parameter_names(dict(args.parameters), [found.notebook for found in resolved.values()])  # this call's -p
    _check_requirements(sequence, {name: found.notebook for name, found in resolved.items()})
    if args.kernel:
        check_kernel(args.kernel)
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("executed", "logs", "figures"):
        (folder / sub).mkdir(exist_ok=True)
    sequence.save()
    sources = {**sources, **_edited_sources(resolved, folder)}
    resume = " ".join(["python -m helpers run-notebooks --resume", shlex.quote(str(folder))]
                      + (["--notebooks", shlex.quote(args.notebooks)] if args.notebooks else [])
                      + (["--kernel", shlex.quote(args.kernel)] if args.kernel else []))
    result = _run(sequence, sources, root, kernel=args.kernel, cell_timeout=args.cell_timeout, resume=resume)
    if args.copy_figures and all(v == "done" for v in result["notebooks"].values()):
        result["copied_figures"] = copy_figures(folder / "figures", Path(args.copy_figures))
    return result


def check_parameter_names(parameters: dict[str, Any], notebooks: list[Any]) -> None:
    """Refuse a -p NAME that no notebook to run has in its parameters cells, suggesting the closest name, and a
    value the notebooks could only fail on (`check_parameter_values`).

    Raises:
        UserError: naming the parameter and the closest names there are, or what is wrong with its value.
    """
    import difflib

    from .parameters import parameters as cell_parameters

    if not notebooks:
        return
    cells = [cell_parameters(nb) for nb in notebooks]
    known = {"profile"}.union(*cells)
    for name in parameters:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            raise UserError(f"-p {name}: no notebook to run has a parameter {name!r}"
                            + (f"; did you mean {' or '.join(close)}?" if close else ".")
                            + f" The parameters are: {', '.join(sorted(known))}.")
    check_parameter_values({name: parse_value(str(text), name) for name, text in parameters.items()}, cells)


def check_parameter_values(values: dict[str, Any], cells: list[dict[str, Any]]) -> None:
    """Refuse, before any notebook runs, a -p value that the notebooks could only fail on: a device that is not
    one of `helpers.base.config.CHOICES["device"]`, or a value of another kind than the notebooks' own literal
    for that parameter (a mapping for `overrides`, a number for a number, ...; a literal None takes anything).

    Args:
        values: the parsed -p values (`parse_value`), by name.
        cells: the parameters of each notebook to run (`parameters.parameters`).

    Raises:
        UserError: naming the flag, the value and what it should be.
    """
    from ..base.config import CHOICES

    device = values.get("device")
    if "device" in values and device not in CHOICES["device"]:
        raise UserError(f"-p device {device!r} is not a device: give one of {', '.join(CHOICES['device'])} "
                        "(auto: cuda, then mps, then cpu). Nothing ran.")
    for name, value in values.items():
        defaults = [cell[name] for cell in cells if name in cell]
        if not defaults or any(d is None or _kind(d) == _kind(value) for d in defaults):
            continue
        example = defaults[0]
        raise UserError(f"-p {name} {value!r} is {_kind(value)}, but {name} is {_kind(example)} in the notebooks "
                        f"(e.g. {example!r}). Nothing ran. Give {_kind(example)}"
                        + (" such as '{epochs: 1}' (YAML)." if isinstance(example, dict) else "."))


def _kind(value: Any) -> str:
    """What a notebook parameter holds, in words: a mapping, a list, a switch (true/false), a number, a text."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, bool):
        return "a switch (true/false)"
    if isinstance(value, (int, float)):
        return "a number"
    return "null" if value is None else "a text"


def _edited_sources(resolved: dict[str, Resolved], folder: Path) -> dict[str, Path]:
    """Write the notebooks whose newer .py differs from their .ipynb into the run folder (sources/), to run
    those; say so for every pair out of sync."""
    import nbformat

    written = {}
    for name, found in resolved.items():
        if not found.differs:
            continue
        _say(f"{name}: {found.note()}")
        if found.inputs != found.path:
            target = folder / "sources" / f"{name}.ipynb"
            target.parent.mkdir(exist_ok=True)
            nbformat.write(found.notebook, str(target))
            written[name] = target
    return written


def copy_figures(source: Path, target: Path, names: tuple[str, ...] = EXAMPLE_FIGURES) -> int:
    """Copy the named PNGs of a run folder's figures/ into `target`, shrunk for committing; returns the count."""
    paths = [source / f"{name}.png" for name in names if (source / f"{name}.png").is_file()]
    for path in paths:
        compact_copy(path, target / path.name)
    _say(f"copied {len(paths)} figures to {target} (at most 1400 px wide, 256 colours)")
    return len(paths)


def compact_copy(source: str | Path, target: str | Path, *, max_width: int = 1400, colors: int = 256) -> Path:
    """Copy a PNG as a smaller one for committing: at most `max_width` pixels wide, `colors` colours (dithered).

    Photos stay recognisable and text readable at a third to a tenth of the size.
    """
    from PIL import Image

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        image = image.convert("RGB")
        if image.width > max_width:
            image = image.resize((max_width, round(image.height * max_width / image.width)), Image.Resampling.LANCZOS)
        image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
    return target


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def _run(sequence: Sequence, sources: dict[str, Path], root: Path, *, kernel: str | None,
         cell_timeout: int | None, resume: str) -> dict:
    folder = sequence.folder
    total = len(sequence.notebooks)
    params = ", ".join(f"{k}={v!r}" for k, v in sequence.parameters.items()) or "none"
    _say(f"run-notebooks: profile {sequence.profile}, {total} notebooks, parameters: {params}")
    _say(f"  run folder {folder}  (executed/ notebooks, logs/, figures/; follow one with tail -f logs/<name>.log)")
    started = time.perf_counter()
    failure, warm = None, None
    todo = [n for n in sequence.notebooks if sequence.status.get(n, {}).get("state") != "done"]
    try:
        for i, name in enumerate(sequence.notebooks, start=1):
            if name not in todo:
                _say(f"[{i:>2}/{total}] {name:<20} done earlier, skipped")
                continue
            # The next notebook's kernel starts now, and loads its imports when this one reaches its last cells
            # (`execute.TAIL_CELLS`: figures on one core, not training on two). The first notebook's kernel starts
            # now too, without them: every kernel is then one of ours, shut down at once when its notebook ends.
            mine = warm or _warm_kernel(sources[name], folder / "logs" / f"{name}.log", root, kernel,
                                        sequence.environment())
            later = todo[todo.index(name) + 1:]
            warm = _warm_kernel(sources[later[0]], folder / "logs" / f"{later[0]}.log", root, kernel,
                                sequence.environment()) if later else None
            failure = _run_one(sequence, name, f"[{i:>2}/{total}] {name:<20}", sources[name], root, kernel=kernel,
                               cell_timeout=cell_timeout, resume=resume, warm=mine,
                               on_tail=warm.load if warm else None)
            if failure:
                break
    finally:
        if warm is not None:
            warm.discard()
    elapsed = time.perf_counter() - started
    _print_summary(sequence, elapsed)
    if failure:
        name, exc = failure
        raise UserError(
            f"{name} failed in {exc.where}: {exc.error.rstrip('.')}. The executed notebook {exc.executed} shows the traceback; "
            f"its log is {exc.log}. After fixing the cause, continue with: {resume}" + (" -p NAME VALUE (to change a parameter)" if sequence.parameters else "")
        )
    return {"run_dir": str(folder), "profile": sequence.profile, "minutes": round(elapsed / 60, 2),
            "notebooks": {n: sequence.status[n]["state"] for n in sequence.notebooks}}


def _warm_kernel(source: Path, log: Path, root: Path, kernel: str | None, env: dict) -> WarmKernel | None:
    """A notebook's kernel, started now without its imports (`execute.WarmKernel`, `load` loads them); None when it
    cannot start (then papermill starts it in its turn, and says why if it still cannot)."""
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        return WarmKernel(source, log, cwd=root, kernel=kernel, env=env, preload=False)
    except Exception as exc:
        _logger.debug("no warm kernel for %s: %s", source.name, exc)
        return None


def _run_one(sequence: Sequence, name: str, tag: str, source: Path, root: Path, *, kernel: str | None,
             cell_timeout: int | None, resume: str, warm: WarmKernel | None,
             on_tail: Callable[[], None] | None = None) -> tuple[str, NotebookFailure] | None:
    """Execute one notebook of the sequence and record its state; returns (name, failure) when it failed."""
    folder = sequence.folder
    status = sequence.status.setdefault(name, {"state": "pending"})
    _say(f"{tag} started {time.strftime('%H:%M:%S')}")
    status.update(state="running", started=time.strftime("%Y-%m-%d %H:%M:%S"), error=None)
    sequence.save()
    t0, cpu0 = time.time(), _children_cpu()
    saved_before = _figure_times(folder / "figures")
    try:
        execute(source, folder / "executed" / f"{name}.ipynb", folder / "logs" / f"{name}.log",
                parameters={"profile": sequence.profile, **sequence.parameters}, env=sequence.environment(),
                cwd=root, kernel=kernel, cell_timeout=cell_timeout, warm=warm, on_tail=on_tail)
    except KeyboardInterrupt:
        status.update(state="interrupted", seconds=time.time() - t0)
        sequence.save()
        raise KeyboardInterrupt(f"{name} was stopped; the notebooks done are kept in {folder}. Continue with: "
                                f"{resume}") from None
    except NotebookFailure as exc:
        status.update(state="failed", seconds=time.time() - t0, error=exc.summary)
        sequence.save()
        _say(f"{tag} FAILED after {_clock(time.time() - t0)}: {exc.summary}")
        return name, exc
    figures = [p for p, t in _figure_times(folder / "figures").items() if saved_before.get(p) != t]
    cpu = _children_cpu() - cpu0
    status.update(state="done", seconds=time.time() - t0, cpu_seconds=cpu, figures=len(figures))
    sequence.save()
    _say(f"{tag} done in {_clock(time.time() - t0)} (CPU {_clock(cpu)}), {len(figures)} figures")
    return None


def _figure_times(folder: Path) -> dict[Path, int]:
    """Each PNG of `folder` and its modification time (a notebook's figures are those new or changed after it)."""
    return {p: p.stat().st_mtime_ns for p in folder.glob("*.png")}


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children: the kernels that ran the notebooks.
    On a shared machine it tells what a notebook costs, which its wall time does not."""
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    from .kernels import finished_cpu  # the forked kernels are the fork server's children

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime + finished_cpu()


def _print_summary(sequence: Sequence, elapsed: float) -> None:
    _say(f"\nSummary of {sequence.folder} ({sequence.profile}), {_clock(elapsed)} in this call:")
    for name in sequence.notebooks:
        status = sequence.status.get(name, {})
        state = status.get("state", "pending")
        seconds = status.get("seconds")
        line = f"  {name:<20} {state:<12} {_clock(seconds) if seconds is not None else '':>8}"
        if status.get("cpu_seconds") is not None:
            line += f"  CPU {_clock(status['cpu_seconds']):>7}"
        if status.get("figures") is not None:
            line += f"  {status['figures']} figures"
        if state == "failed":
            line += f"  {status.get('error')}"
        _say(line)
