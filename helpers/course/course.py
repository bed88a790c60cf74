"""The course layer: where a notebook's runs go, the runs it needs from earlier notebooks, the ledger rows it
writes and the results table. The settings of each run are in the notebook's parameters cell, not here.

    c = Course("05_two_stage", profile="demo")
    stage1 = c.config("stage1", SETTINGS[profile]["stage1"])      # the notebook's literals -> a TrainConfig
                                                                   # (other settings: models/05_two_stage/stage1~...)
    helpers.train(stage1)                                          # resumes from last.pt when re-run
    test = c.evaluate(stage1.output_dir)                           # test metrics and a per-image predictions CSV
    c.record("3.5", stage1.output_dir, test)                       # one row in the results ledger
    stage2_of_05 = c.require("05_two_stage", "stage2")             # another notebook's run (says what to run first)

Profiles: full (Food-101 at the plan's settings), medium (a fixed 10% of Food-101: an evening on a Mac, test
differences that mean something), demo (the tiny real subset in the repo, CPU minutes), ci (demo shrunk to check
that everything runs). `rehearse=True` runs the full profile's exact chain with random
weights, a few steps per run and small images on the 101-class thumbnails in the repo (`run-notebooks
--rehearse`), so a wiring bug shows in minutes rather than at night. Relative paths are taken from the project
root, not from the notebook's folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base.config import TrainConfig, make_config
from ..base.errors import UserError
from . import analysis, ledger, run_names, times
from .roadmap import ROADMAP  # the phases `record` takes

if TYPE_CHECKING:
    import pandas as pd


_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Profile:
    """Where a profile's data is, and how many loader workers its machine gets."""

    description: str
    data_dir: str  # relative to the project root
    num_workers: int  # -1: one per CPU core up to 8


# run-notebooks tells the notebooks' kernel where the runs go, the ledger and whether it rehearses (the notebooks
# have no parameter for them: a learner never sets them).
ENV_FOLDER, ENV_LEDGER, ENV_REHEARSE = "HELPERS_COURSE_DIR", "HELPERS_LEDGER", "HELPERS_REHEARSE"
# The ci profile: the demo's literals with the settings of this tests-side file over every run (tests/ci_profile.yaml).
CI_SETTINGS = "tests/ci_profile.yaml"
PROFILES: dict[str, Profile] = {
    "full": Profile("Food-101 at the plan's settings, on MPS or CUDA (hours per notebook)", "data/food-101", -1),
    "medium": Profile("a fixed 10% of Food-101 (75 train + 25 test photos of each of the 101 classes) with the "
                      "offline efficientnet-lite weights at their own sizes: the course in an evening on a Mac, "
                      "with 2,525 test photos to tell the techniques apart", "data/food-101-medium", -1),
    "demo": Profile("the tiny real Food-101 subset in the repo with offline efficientnet-lite weights (minutes per "
                    "notebook on a laptop CPU)", "data/food-101-tiny", 0),
    "ci": Profile(f"the demo's literals with the smaller runs of {CI_SETTINGS}: checks that every notebook runs, "
                  "numbers mean nothing", "data/food-101-tiny", 0),
}

# How to make a profile's data when it is missing (full: `--download` in 00_setup).
MAKE_DATA = {"medium": "python -m helpers prepare --data-dir data/food-101 --out data/food-101-medium "
                       "--short-side 288 --per-class 75,25"}

REHEARSAL_DATA = "data/food-101-thumbs"  # 101 classes x 4 thumbnails, official layout

REHEARSAL = dict(pretrained="none", max_steps=2, num_workers=0, epochs=1)  # and a quarter of the image size


def project_root() -> Path:
    """The workbook's folder: the first folder upward from the working directory with helpers/ and notebooks/,
    else the folder this package lives in (a notebook's working directory is notebooks/)."""
    for folder in (Path.cwd(), *Path.cwd().parents):
        if (folder / "helpers" / "__init__.py").is_file() and (folder / "notebooks").is_dir():
            return folder
    return Path(__file__).resolve().parents[2]


def notebooks(folder: Path | None = None) -> list[str]:
    """The course's notebooks, `NN_slug` for every `notebooks/NN_slug.ipynb`, in order."""
    folder = folder or project_root() / "notebooks"
    return sorted(p.stem for p in folder.glob("*.ipynb") if re.match(r"^\d\d_", p.name))


def check_profile(profile: str) -> Profile:
    """The Profile named `profile`; a UserError naming the choices otherwise."""
    if profile not in PROFILES:
        raise UserError(f"Unknown profile {profile!r}: use one of {', '.join(PROFILES)}.")
    return PROFILES[profile]


def literals_of(profile: str) -> str:
    """The profile whose literals a profile reads from a notebook's per-profile parameters: its own; ci, the demo's."""
    return "demo" if profile == "ci" else profile


def ci_settings(root: Path, notebook: str, run: str) -> dict[str, Any]:
    """The ci profile's TrainConfig settings for one run: `CI_SETTINGS`'s `all`, then its notebook's, then its
    `notebook/run`'s entries (each a mapping), applied over the demo's settings of that run.

    Raises:
        UserError: the file is missing (the ci profile is for the repository's tests) or not such a mapping.
    """
    import yaml

    path = root / CI_SETTINGS
    if not path.is_file():
        raise UserError(f"The ci profile reads {path}, which is not there: it belongs to the repository's tests. "
                        "Use the demo profile.")
    runs = (yaml.safe_load(path.read_text()) or {}).get("runs", {})
    entries = [runs.get(key) or {} for key in ("all", notebook, f"{notebook}/{run}")]
    if not all(isinstance(e, dict) for e in entries):
        raise UserError(f"{path}: each entry under runs: must be a mapping of TrainConfig settings.")
    return {k: v for e in entries for k, v in e.items()}


def rehearsal(settings: dict[str, Any]) -> dict[str, Any]:
    """A run's settings for the rehearsal: the same run with random weights, one epoch of 2 steps, a quarter of
    the image size and at most 8 images a step (warmup and restart cycles shortened to fit the one epoch)."""
    size = settings.get("image_size") or 224
    return {**settings, **REHEARSAL, "image_size": max(32, size // 4),
            "batch_size": min(8, settings.get("batch_size", TrainConfig.batch_size)),
            "warmup_epochs": min(0.5, settings.get("warmup_epochs", TrainConfig.warmup_epochs)),
            "restart_epochs": min(1, settings.get("restart_epochs", TrainConfig.restart_epochs))}


class Course:
    """One notebook of the course in one profile: its run folders, the runs it needs, its ledger rows.

    Where the runs go, the ledger and the rehearsal are not notebook parameters: `run-notebooks` sets them for the
    kernel (HELPERS_COURSE_DIR, HELPERS_LEDGER, HELPERS_REHEARSE=1); in JupyterLab the defaults below hold.

    Args:
        notebook: the notebook's name, e.g. "02_b3_upgrade".
        profile: "demo", "medium", "full" or "ci" (the demo's literals, shrunk by `CI_SETTINGS`).
        data_dir: the dataset folder (None: the profile's).
        device: "auto", "cuda", "mps" or "cpu".
        output_dir: the course run folder holding models/, predictions/ and figures/ (None: HELPERS_COURSE_DIR,
            else runs/course-<profile>).
        ledger: the results ledger CSV (None: HELPERS_LEDGER, else runs/ledger.csv).
        rehearse: the full profile's chain with random weights, 2 steps per run and small images (None:
            HELPERS_REHEARSE=1).
    """

    def __init__(self, notebook: str, profile: str = "demo", *, data_dir: str | None = None, device: str = "auto",
                 output_dir: str | None = None, ledger: str | None = None, rehearse: bool | None = None):
        rehearse = os.environ.get(ENV_REHEARSE) == "1" if rehearse is None else rehearse
        self.notebook, self.profile, self.device, self.rehearse = notebook, profile, device, rehearse
        info = check_profile(profile)
        self.root = project_root()
        self.data_dir = self._path(data_dir or (REHEARSAL_DATA if rehearse else info.data_dir))
        if data_dir is None and not rehearse and profile in MAKE_DATA and not self.data_dir.is_dir():
            raise UserError(f"The {profile} profile reads {self.data_dir}, which does not exist. Make it once from "
                            f"the full Food-101 (00_setup downloads that into data/food-101): {MAKE_DATA[profile]}")
        self.num_workers = 0 if rehearse else info.num_workers
        default = f"runs/course-{profile}" + ("-rehearsal" if rehearse else "")
        self.output_dir = self._path(output_dir or os.environ.get(ENV_FOLDER) or default)
        self.figures = self.output_dir / "figures"
        self.ledger_path = self._path(ledger or os.environ.get(ENV_LEDGER) or "runs/ledger.csv")
        setup_logging()

    def pick(self, per_profile: dict[str, Any]) -> Any:
        """This profile's entry of a per-profile literal of the parameters cell (`SETTINGS[profile]`); the ci
        profile reads the demo's (its runs are shrunk in `config`)."""
        key = literals_of(self.profile)
        if key not in per_profile:
            raise UserError(f"A per-profile setting of {self.notebook} has no {key!r} entry (it has "
                            f"{', '.join(map(repr, per_profile)) or 'none'}): add one to its parameters cell.")
        return per_profile[key]

    def _path(self, path: str | Path) -> Path:
        path = Path(path).expanduser()
        return path if path.is_absolute() else self.root / path

    def project_path(self, path: str | Path) -> Path:
        """A path as a notebook's parameter gives it: `~` expanded, a relative path taken from the project root."""
        return self._path(path)

    def run_dir(self, notebook: str, run: str) -> Path:
        """The folder of a run of any notebook of this course (it may not exist yet)."""
        return self.output_dir / "models" / notebook / run

    def require(self, notebook: str, run: str) -> Path:
        """The folder of a finished run of an earlier notebook.

        Raises:
            UserError: the run has no best.pt yet, with the command that makes it.
        """
        folder = self.run_dir(notebook, run)
        if not (folder / "best.pt").is_file():
            raise UserError(
                f"{self.notebook} needs the {run!r} model of {notebook}, which is not in {folder}. Run {notebook} "
                f"first in this course folder (python -m helpers run-notebooks --profile {self.profile} --only "
                f"{notebook[:2]},{self.notebook[:2]} runs both into one), or point this notebook's parameter at a "
                "trained run folder."
            )
        return folder

    def class_names(self) -> list[str]:
        """The classes of this course's dataset, in label order."""
        from ..data.splits import load_splits

        return load_splits("food-101", str(self.data_dir)).class_names

    def config(self, run: str, settings: dict[str, Any], *, start_from: str | Path | None = None) -> TrainConfig:
        """The TrainConfig of one of this notebook's runs: `settings` (the notebook's literals) in this course.

        The course's run trains in `<output_dir>/models/<notebook>/<run>` with `resume="auto"`: a re-run continues
        from its last.pt. Other settings for the same run (a Try it) train beside it in a folder named after what
        differs, e.g. `baseline~lr=0.0003`, and later notebooks keep reading the course's run; settings equal to a
        run this course finished already reuse that run (`run_names.choose` says which, in the log). `start_from`
        (a run folder) starts the run from that run's best weights as a new stage until it has its own last.pt (the
        plan's `--resume checkpoint.pt` between stages).

        Raises:
            UserError: an unknown setting or a bad value.
        """
        values = rehearsal(settings) if self.rehearse else dict(settings)
        values.setdefault("num_workers", self.num_workers)
        if self.profile == "ci":
            values.update(ci_settings(self.root, self.notebook, run))
        values.update(dataset="food-101", data_dir=str(self.data_dir), device=self.device, resume="auto",
                      output_dir=str(self.run_dir(self.notebook, run)))
        cfg = make_config(values)
        folder = run_names.choose(self.output_dir, self.notebook, run, run_names.identity(cfg, start_from))
        resume = "auto" if start_from is None or (folder / "last.pt").is_file() else str(Path(start_from) / "best.pt")
        return dataclasses.replace(cfg, output_dir=str(folder), resume=resume)

    def features_dir(self, label: str, backbone: str, pretrained: str, image_size: int | None, views: int) -> Path:
        """The folder of one backbone's cached features in this notebook, named after every setting they depend on
        (backbone, weights, size, views, data): other settings compute new features beside the old ones."""
        settings = dict(backbone=backbone, pretrained=pretrained, image_size=image_size, views=views,
                        data=str(self.data_dir.resolve()))
        return run_names.cache_folder(self.output_dir, self.notebook, "features",
                                      [label, f"{image_size}px", f"{views}view"], settings)

    def probe_dir(self, label: str, features: list[Path]) -> Path:
        """The folder of a linear probe on cached features, named after them (so after all their settings)."""
        return run_names.cache_folder(self.output_dir, self.notebook, "probe", [label],
                                      {"features": [Path(f).name for f in features]})

    def times(self) -> pd.DataFrame:
        """This notebook's time in each profile, the machine and how it was obtained (docs/times.csv)."""
        return times.table(self.root, self.notebook)

    @property
    def probs_cache(self) -> Path:
        """Where `evaluate` and `ensemble` keep each run's softmax on a split: later notebooks evaluate the same
        runs again (06 and 07 read 05's, 09's teacher is 08's ensemble), and reuse them while the run's weights
        file and the split's files are unchanged (`inference.member_probs`)."""
        return self.output_dir / "predictions" / "cache"

    def evaluate(self, run: str | Path, *, tta: int = 1, image_size: int | None = None, split: str = "test",
                 tag: str | None = None) -> dict[str, Any]:
        """Evaluate a trained run on a split and keep its per-image predictions (reusing `probs_cache`).

        Returns:
            {"top1", "top5", "n", "predictions": the CSV path, "run": the run folder}
        """
        from ..use.inference import evaluate

        run = Path(run)
        tag = tag or f"{run.name}-{split}" + (f"-tta{tta}" if tta > 1 else "") + (f"-{image_size}px" if image_size else "")
        path = self.output_dir / "predictions" / f"{self.notebook}-{tag}.csv"
        result = evaluate(str(run), dataset="food-101", data_dir=str(self.data_dir), split=split, tta=tta,
                          image_size=image_size, device=self.device, predictions=str(path),
                          num_workers=self.num_workers, cache=self.probs_cache)
        return {**result, "predictions": str(path), "run": str(run)}

    def ensemble(self, runs: list[str | Path], *, tta: int = 1, tag: str = "ensemble") -> dict[str, Any]:
        """Evaluate the softmax average of several runs on the test split, keeping its per-image predictions.

        Returns:
            {"top1", "top5", "n", "members": [...], "predictions": the CSV path}
        """
        from ..use.inference import ensemble

        path = self.output_dir / "predictions" / f"{self.notebook}-{tag}.csv"
        result = ensemble([str(r) for r in runs], dataset="food-101", data_dir=str(self.data_dir), split="test",
                          tta=tta, device=self.device, predictions=str(path), num_workers=self.num_workers,
                          cache=self.probs_cache)
        return {**result, "predictions": str(path)}

    def test_result(self, notebook: str, run: str) -> dict[str, Any]:
        """{"top1", "n", "run"} of a course run on the test split (its summary.json), with "predictions" when
        that notebook kept its per-image predictions (for the paired test); NaN when it has not run."""
        summary = self.run_dir(notebook, run) / "summary.json"
        if not summary.is_file():
            return {"top1": float("nan"), "n": 0}
        data = json.loads(summary.read_text())
        result: dict[str, Any] = {"top1": float(data.get("test_top1", float("nan"))), "n": int(data.get("test_n", 0)),
                                  "run": str(summary.parent)}
        predictions = self.output_dir / "predictions" / f"{notebook}-{run}-test.csv"  # as `evaluate` names them
        if predictions.is_file():
            result["predictions"] = str(predictions)
        return result

    def trained_runs(self) -> pd.DataFrame:
        """Every finished run of this course run (fine-tuned and probe runs: a folder with a summary.json), in
        notebook order: notebook, run, backbone, val_top1, test_top1, path."""
        import pandas as pd

        rows = []
        for summary in sorted((self.output_dir / "models").glob("*/*/summary.json")):
            data = json.loads(summary.read_text())
            if not analysis.is_number(data.get("val_top1")):
                continue
            backbone = " + ".join(data["features"]) if "features" in data else _run_facts(summary.parent, True).get(
                "backbone", "")
            rows.append({"notebook": summary.parent.parent.name, "run": summary.parent.name, "backbone": backbone,
                         "val_top1": float(data["val_top1"]), "test_top1": data.get("test_top1"),
                         "path": str(summary.parent)})
        return pd.DataFrame(rows, columns=["notebook", "run", "backbone", "val_top1", "test_top1", "path"])

    def best_run(self) -> Path:
        """The run of this course with the highest validation top-1 (never chosen on test; a tie goes to the
        earlier notebook).

        Raises:
            UserError: no notebook has trained a run yet.
        """
        runs = self.trained_runs()
        if runs.empty:
            raise UserError(f"{self.notebook} needs a trained run of this course, and {self.output_dir / 'models'} "
                            f"has none. Run the course first (python -m helpers run-notebooks --profile "
                            f"{self.profile}), or point this notebook's `model` parameter at a run folder.")
        return Path(runs.sort_values("val_top1", ascending=False, kind="stable").iloc[0]["path"])

    def record(self, phase: str, run: str | Path | list, test: dict[str, Any], *, technique: str | None = None,
               reference: str | None = None, reference_top1: float | dict | None = None) -> dict[str, Any]:
        """Append this notebook's result for a phase to the results ledger.

        Args:
            phase: a key of ROADMAP (e.g. "2.1"), or a new phase's key with its `technique`.
            run: the run folder measured (or the list of an ensemble's members).
            test: the result of `evaluate` / `ensemble` (top1, top5, n).
            technique: what the phase measures (default: the roadmap's words).
            reference: what the gain is measured against, in words (default: the roadmap's).
            reference_top1: the test top-1 the gain is measured against (None: no gain), or the reference's
                result dict: with its "predictions" the row also gets the photos fixed and broken, which the
                results table's paired test (McNemar) reads.

        Returns:
            The ledger row.
        """
        return _record(self, phase, run, test, technique, reference, reference_top1)


def _record(c: Course, phase: str, run: str | Path | list, test: dict[str, Any], technique: str | None,
            reference: str | None, reference_top1: float | dict | None) -> dict[str, Any]:
    """`Course.record`: the ledger row of a phase, appended, and one line saying what was recorded."""
    plan = ROADMAP.get(phase)
    if plan is None and technique is None:
        raise UserError(f"Phase {phase!r} is not in the plan's roadmap ({', '.join(ROADMAP)}): give its "
                        "technique=... in words.")
    changes: dict[str, Any] = {}
    if isinstance(reference_top1, dict):
        if reference_top1.get("predictions") and test.get("predictions"):
            paired = analysis.paired_changes(reference_top1["predictions"], test["predictions"])
            changes = {"fixed": len(paired["fixed"]), "broken": len(paired["broken"])}
        reference_top1 = reference_top1.get("top1")
    row: dict[str, Any] = dict(
        course=str(c.output_dir), profile=c.profile + ("-rehearsal" if c.rehearse else ""),
        notebook=c.notebook, phase=phase, technique=technique or plan.technique, test_top1=test["top1"],
        test_top5=test.get("top5"), test_n=test.get("n"), reference=reference or (plan.reference if plan else ""),
        reference_top1=reference_top1, device=_device_name(c.device), **changes)
    if isinstance(run, (list, tuple)):
        row.update(run=" + ".join(str(r) for r in run), backbone=f"ensemble of {len(run)}", train_minutes=0.0)
    else:
        row.update(_run_facts(Path(run), evaluation_only=phase == "3.4"))
    written = ledger.append(c.ledger_path, row)
    print(f"Recorded phase {phase} ({row['technique']}): test top-1 "
          f"{analysis.with_interval(test['top1'], test.get('n') or 0)}"
          + (f", {test['top1'] - reference_top1:+.1f} points against {row['reference']}"
          if analysis.is_number(reference_top1) else "")
          + (f", {analysis.paired_text(changes['fixed'], changes['broken'])}" if changes else ""))
    return written


def _device_name(device: str) -> str:
    """The machine a run's minutes were measured on: the device in words (a Mac's chip and macOS; elsewhere a CPU
    with its core count)."""
    from ..base.devices import apple_machine, device_description, get_device

    found = get_device(device)
    if found.type == "cpu" and not apple_machine():
        return f"cpu ({os.cpu_count()} cores)"
    return device_description(found)


def _run_facts(run: Path, evaluation_only: bool) -> dict[str, Any]:
    """What trained: backbone, size and epochs from the run's config.yaml and summary.json."""
    import yaml

    facts: dict[str, Any] = {"run": str(run)}
    if (run / "config.yaml").is_file():
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        facts.update(backbone=cfg.get("backbone"), image_size=cfg.get("image_size"))
    if (run / "summary.json").is_file():
        summary = json.loads((run / "summary.json").read_text())
        facts.update(epochs=summary.get("epochs_run"), val_top1=summary.get("val_top1"),
                     train_minutes=0.0 if evaluation_only else _train_minutes(run, summary))
    return facts


def _train_minutes(run: Path, summary: dict[str, Any]) -> float:
    """Minutes the run trained: its epochs' seconds in metrics.csv (a re-run or a reuse of a finished run re-tests it
    and writes only that time into summary.json), else the summary's."""
    from ..training.metrics import read_rows

    if (run / "metrics.csv").is_file():
        seconds = [row.get("epoch_seconds") for row in read_rows(run / "metrics.csv")]
        if seconds and all(analysis.is_number(s) for s in seconds):
            return sum(float(s) for s in seconds) / 60
    return float(summary.get("train_seconds", 0.0)) / 60


def setup_logging() -> None:
    """Show the package's INFO messages (epochs, test results) in the notebook, once per process."""
    package = logging.getLogger("helpers")
    if package.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    package.addHandler(handler)
    package.setLevel(logging.INFO)


__all__ = ["PROFILES", "Course", "Profile", "project_root", "notebooks", "check_profile",
           "rehearsal", "setup_logging"]
