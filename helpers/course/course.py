"""The course layer: where a notebook's runs go, the runs it needs from earlier notebooks, the ledger rows it
writes and the results table. The settings of each run are in the notebook's parameters cell, not here.

    c = Course("05_two_stage", profile="demo")
    stage1 = c.config("stage1", SETTINGS[profile]["stage1"])      # the notebook's literals -> a TrainConfig
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
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base.config import TrainConfig, config_from_dict, make_config
from ..base.errors import UserError
from . import analysis, ledger

if TYPE_CHECKING:
    import pandas as pd


_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Profile:
    """Where a profile's data is, and how many loader workers its machine gets."""

    description: str
    data_dir: str  # relative to the project root
    num_workers: int  # -1: one per CPU core up to 8


PROFILES: dict[str, Profile] = {
    "full": Profile("Food-101 at the plan's settings, on MPS or CUDA (hours per notebook)", "data/food-101", -1),
    "medium": Profile("a fixed 10% of Food-101 (75 train + 25 test photos of each of the 101 classes) with the "
                      "offline efficientnet-lite weights at their own sizes: the course in an evening on a Mac, "
                      "with 2,525 test photos to tell the techniques apart", "data/food-101-medium", -1),
    "demo": Profile("the tiny real Food-101 subset in the repo with offline efficientnet-lite weights (minutes per "
                    "notebook on a laptop CPU)", "data/food-101-tiny", 0),
    "ci": Profile("demo shrunk to 64 px and one epoch: checks that every notebook runs, numbers mean nothing",
                  "data/food-101-tiny", 0),
}

# How to make a profile's data when it is missing (full: `--download` in 00_setup).
MAKE_DATA = {"medium": "python -m helpers prepare --data-dir data/food-101 --out data/food-101-medium "
                       "--short-side 288 --per-class 75,25"}

REHEARSAL_DATA = "data/food-101-thumbs"  # 101 classes x 4 thumbnails, official layout

REHEARSAL = dict(pretrained="none", max_steps=2, num_workers=0, epochs=1)  # and a quarter of the image size


@dataclass(frozen=True)
class Phase:
    """One row of the plan's roadmap: what it measures and what the plan expects."""

    technique: str  # what the phase measures, in words
    plan_recipe: str  # the plan's model and schedule for it (a profile may train something smaller)
    plan_time: str  # the plan's extra training time
    plan_gain: str  # the plan's expected gain in top-1
    plan_top1: str  # the plan's expected cumulative top-1
    reference: str  # what the gain is measured against, in words
    in_plan_table: bool = True  # False: from the plan's text, not its Quick Reference table


ROADMAP: dict[str, Phase] = {
    "baseline": Phase("Baseline", "EfficientNet-B0, 50 epochs", "6h", "-", "75-80%", ""),
    "2.1": Phase("Larger backbone", "B3, 100 epochs", "+10h", "+6%", "82-86%", "baseline (01)"),
    "2.2": Phase("Alternative backbone", "ResNet-50, 100 epochs", "", "+4-6%", "80-85%", "baseline (01)", False),
    "3.1": Phase("Longer training, better scheduling", "B3, 150 epochs", "+6h", "+2%", "84-88%", "B3 (2.1)"),
    "3.2": Phase("Advanced augmentation", "B3, 150 epochs", "+0h", "+1.5%", "85.5-89.5%",
                 "better scheduling (3.1)"),
    "3.3": Phase("Mixup/CutMix", "B3, 150 epochs", "+0h", "+3%", "88.5-92.5%", "advanced augmentation (3.2)"),
    "3.4": Phase("Test-time augmentation", "the 3.5 model", "+0h", "+1.5%", "90-94%", "the same model, one view"),
    "3.5": Phase("Two-stage training (+3.6 discriminative LRs)", "B3, 10 + 100 epochs", "+2h", "+2%", "92-96%",
                 "one stage of the same length (05)"),
    "4.1": Phase("Higher resolution", "B3 at 384 px", "+8h", "+1.5%", "93.5-97.5%",
                 "the same fine-tune at 05's size (07)"),
    "4.2": Phase("Ensemble (3 models)", "B3 + B4 + ResNet-101", "+30h", "+2%", "95.5-99.5%",
                 "its best member by validation"),
    "4.3": Phase("Knowledge distillation (optional)", "student with a B4 teacher", "", "+1-2% (student)", "",
                 "the student trained alone", False),
    # Past the plan (notebook 10): stronger pretrained features, published numbers in place of the plan's.
    "5.1": Phase("Linear probes on strong features, ensembled", "SigLIP SO400M/384 + CLIP ViT-L/14@336 probes",
                 "features once", "",
                 "95.9% published for a CLIP ViT-L probe, not for these models", "its best probe", False),
    "5.2": Phase("Fine-tune from the probe's head, layer decay (LP-FT)", "EVA-02-B/448 from its probe", "", "", "",
                 "its probe", False),
}


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

    Args:
        notebook: the notebook's name, e.g. "02_b3_upgrade".
        profile: "demo", "medium", "full" or "ci".
        data_dir: the dataset folder (None: the profile's).
        device: "auto", "cuda", "mps" or "cpu".
        output_dir: the course run folder holding models/, predictions/ and figures/ (None: runs/course-<profile>).
        ledger: the results ledger CSV (None: runs/ledger.csv).
        rehearse: the full profile's chain with random weights, 2 steps per run and small images.
    """

    def __init__(self, notebook: str, profile: str = "demo", *, data_dir: str | None = None, device: str = "auto",
                 output_dir: str | None = None, ledger: str | None = None, rehearse: bool = False):
        self.notebook, self.profile, self.device, self.rehearse = notebook, profile, device, rehearse
        info = check_profile(profile)
        self.root = project_root()
        self.data_dir = self._path(data_dir or (REHEARSAL_DATA if rehearse else info.data_dir))
        if data_dir is None and not rehearse and profile in MAKE_DATA and not self.data_dir.is_dir():
            raise UserError(f"The {profile} profile reads {self.data_dir}, which does not exist. Make it once from "
                            f"the full Food-101 (00_setup downloads that into data/food-101): {MAKE_DATA[profile]}")
        self.num_workers = 0 if rehearse else info.num_workers
        self.output_dir = self._path(output_dir or f"runs/course-{profile}" + ("-rehearsal" if rehearse else ""))
        self.figures = self.output_dir / "figures"
        self.ledger_path = self._path(ledger or "runs/ledger.csv")
        setup_logging()

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
                f"first with the same output_dir (python -m helpers run-notebooks --profile {self.profile} --only "
                f"{notebook[:2]},{self.notebook[:2]}), or point this notebook's parameter at a trained run folder."
            )
        return folder

    def class_names(self) -> list[str]:
        """The classes of this course's dataset, in label order."""
        from ..data.splits import load_splits

        return load_splits("food-101", str(self.data_dir)).class_names

    def config(self, run: str, settings: dict[str, Any], *, start_from: str | Path | None = None) -> TrainConfig:
        """The TrainConfig of one of this notebook's runs: `settings` (the notebook's literals) in this course.

        The run goes to `<output_dir>/models/<notebook>/<run>` with `resume="auto"`: a re-run continues from its
        last.pt. `start_from` (a run folder) starts it from that run's best weights as a new stage until the run
        has its own last.pt (the plan's `--resume checkpoint.pt` between stages).

        Raises:
            UserError: an unknown setting, a bad value, or a folder holding a run with other settings.
        """
        values = rehearsal(settings) if self.rehearse else dict(settings)
        output_dir = self.run_dir(self.notebook, run)
        resume = "auto"
        if start_from is not None and not (output_dir / "last.pt").is_file():
            resume = str(Path(start_from) / "best.pt")
        values.setdefault("num_workers", self.num_workers)
        values.update(dataset="food-101", data_dir=str(self.data_dir), device=self.device, resume=resume,
                      output_dir=str(output_dir))
        cfg = make_config(values)
        _check_same_run(cfg, self.notebook)
        return cfg

    def evaluate(self, run: str | Path, *, tta: int = 1, image_size: int | None = None, split: str = "test",
                 tag: str | None = None) -> dict[str, Any]:
        """Evaluate a trained run on a split and keep its per-image predictions.

        Returns:
            {"top1", "top5", "n", "predictions": the CSV path, "run": the run folder}
        """
        from ..use.inference import evaluate

        run = Path(run)
        tag = tag or f"{run.name}-{split}" + (f"-tta{tta}" if tta > 1 else "") + (f"-{image_size}px" if image_size else "")
        path = self.output_dir / "predictions" / f"{self.notebook}-{tag}.csv"
        result = evaluate(str(run), dataset="food-101", data_dir=str(self.data_dir), split=split, tta=tta,
                          image_size=image_size, device=self.device, predictions=str(path),
                          num_workers=self.num_workers)
        return {**result, "predictions": str(path), "run": str(run)}

    def ensemble(self, runs: list[str | Path], *, tta: int = 1, tag: str = "ensemble") -> dict[str, Any]:
        """Evaluate the softmax average of several runs on the test split, keeping its per-image predictions.

        Returns:
            {"top1", "top5", "n", "members": [...], "predictions": the CSV path}
        """
        from ..use.inference import ensemble

        path = self.output_dir / "predictions" / f"{self.notebook}-{tag}.csv"
        result = ensemble([str(r) for r in runs], dataset="food-101", data_dir=str(self.data_dir), split="test",
                          tta=tta, device=self.device, predictions=str(path), num_workers=self.num_workers)
        return {**result, "predictions": str(path)}

    def test_result(self, notebook: str, run: str) -> dict[str, Any]:
        """{"top1", "n"} of a run of this course on the test split (its summary.json), with "predictions" when
        that notebook kept its per-image predictions (for the paired test); NaN when it has not run."""
        summary = self.run_dir(notebook, run) / "summary.json"
        if not summary.is_file():
            return {"top1": float("nan"), "n": 0}
        data = json.loads(summary.read_text())
        result: dict[str, Any] = {"top1": float(data.get("test_top1", float("nan"))), "n": int(data.get("test_n", 0))}
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
            course=str(self.output_dir), profile=self.profile + ("-rehearsal" if self.rehearse else ""),
            notebook=self.notebook, phase=phase, technique=technique or plan.technique, test_top1=test["top1"],
            test_top5=test.get("top5"), test_n=test.get("n"), reference=reference or (plan.reference if plan else ""),
            reference_top1=reference_top1, device=_device_name(self.device), **changes)
        if isinstance(run, (list, tuple)):
            row.update(run=" + ".join(str(r) for r in run), backbone=f"ensemble of {len(run)}", train_minutes=0.0)
        else:
            row.update(_run_facts(Path(run), evaluation_only=phase == "3.4"))
        written = ledger.append(self.ledger_path, row)
        print(f"Recorded phase {phase} ({row['technique']}): test top-1 "
              f"{analysis.with_interval(test['top1'], test.get('n') or 0)}"
              + (f", {test['top1'] - reference_top1:+.1f} points against {row['reference']}"
              if analysis.is_number(reference_top1) else "")
              + (f", {analysis.paired_text(changes['fixed'], changes['broken'])}" if changes else ""))
        return written

    def results(self) -> pd.DataFrame:
        """The plan's roadmap with this course's measured numbers and their 95% intervals (for 12_results).

        One row per phase of the roadmap, then one per other phase in the ledger (e.g. a notebook added later).
        Takes the newest ledger row of each phase of this course run; a phase it did not measure falls back to
        the newest row of the same profile from any course run, marked in the `source` column.
        """
        import pandas as pd

        frame = ledger.read(self.ledger_path)
        own = ledger.latest(frame, course=str(self.output_dir))
        other = ledger.latest(frame, profile=str(own["profile"].iloc[0]) if len(own) else self.profile)
        extra = [p for p in dict.fromkeys([*own["phase"], *other["phase"]]) if p not in ROADMAP]
        rows = []
        for key in [*ROADMAP, *extra]:
            hit, source = own[own["phase"] == key], "this course run"
            if hit.empty:
                hit, source = other[other["phase"] == key], "an earlier course run"
            rows.append(_result_row(key, ROADMAP.get(key), None if hit.empty else hit.iloc[-1],
                                    source if not hit.empty else "not measured"))
        return pd.DataFrame(rows)

    def save_results(self, table: pd.DataFrame) -> dict[str, Path]:
        """Write the results table as CSV and Markdown into the course run folder."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        paths = {"csv": self.output_dir / "results.csv", "markdown": self.output_dir / "results.md"}
        table.to_csv(paths["csv"], index=False)
        paths["markdown"].write_text(analysis.markdown_table(table))
        return paths


def _check_same_run(cfg: TrainConfig, notebook: str) -> None:
    """A notebook whose settings were edited after its run trained: name the changes before training starts."""
    import yaml

    from ..training.run_folder import RUNTIME_FIELDS, same_run

    out = Path(cfg.output_dir)
    if not (out / "last.pt").is_file() or not (out / "config.yaml").is_file():
        return
    saved = config_from_dict(yaml.safe_load((out / "config.yaml").read_text()) or {})
    if same_run(saved, cfg):
        return
    old, new = dataclasses.asdict(saved), dataclasses.asdict(cfg)
    changed = [f"{k} {old[k]} -> {new[k]}" for k in new if k not in RUNTIME_FIELDS and old[k] != new[k]]
    raise UserError(
        f"{out} holds a run of {notebook} with other settings than the notebook's now ({', '.join(changed)}). "
        f"To train the new settings, give another output_dir or delete {out}; to continue that run, put its "
        "settings back."
    )


def _device_name(device: str) -> str:
    from ..base.devices import device_description, get_device

    return device_description(get_device(device))


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
                     train_minutes=0.0 if evaluation_only else summary.get("train_seconds", 0.0) / 60)
    return facts


def _result_row(key: str, plan: Phase | None, measured: Any, source: str) -> dict[str, Any]:
    """One row of the results table: the plan's expectation beside the measured top-1, its 95% interval, the
    gain and whether that gain is outside the noise."""
    row: dict[str, Any] = {
        "phase": key, "technique": plan.technique if plan else measured["technique"],
        "plan: recipe": plan.plan_recipe if plan else "", "plan: gain": plan.plan_gain if plan else "",
        "plan: top-1": plan.plan_top1 if plan else "", "measured: top-1": None, "95% low": None, "95% high": None,
        "measured: gain": None, "paired p": None, "gain is": "",
        "gain against": plan.reference if plan else measured["reference"],
        "trained": "", "train min": None, "source": source, "in plan table": plan.in_plan_table if plan else False,
    }
    if measured is None:
        return row
    low, high = analysis.wilson(measured["test_top1"], measured["test_n"])
    fixed, broken = measured.get("fixed"), measured.get("broken")
    paired = analysis.is_number(fixed) and analysis.is_number(broken) and analysis.is_number(measured["gain"])
    row.update({"measured: top-1": measured["test_top1"], "95% low": low, "95% high": high,
                "measured: gain": measured["gain"],
                "paired p": analysis.mcnemar(int(fixed), int(broken)) if paired else None,
                # McNemar on the photos fixed and broken when the ledger has them, else the interval rule
                "gain is": analysis.paired_verdict(fixed, broken) if paired else
                analysis.gain_verdict(measured["gain"], measured["reference_top1"], low, high),
                "trained": _trained_label(measured), "train min": measured["train_minutes"]})
    return row


def _trained_label(row: Any) -> str:
    """What a ledger row's run trained, e.g. "lite0 @112 px, 4 epochs" (timm's tf_efficientnet_lite0)."""
    backbone, size, epochs = row.get("backbone"), row.get("image_size"), row.get("epochs")
    if not isinstance(backbone, str):
        return ""
    if backbone.startswith("ensemble"):
        return backbone
    text = backbone.removeprefix("tf_efficientnet_")
    if analysis.is_number(size):
        text += f" @{int(size)} px"
    if analysis.is_number(epochs):
        text += f", {int(epochs)} epoch" + ("s" if int(epochs) != 1 else "")
    return text


def setup_logging() -> None:
    """Show the package's INFO messages (epochs, test results) in the notebook, once per process."""
    package = logging.getLogger("helpers")
    if package.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    package.addHandler(handler)
    package.setLevel(logging.INFO)


__all__ = ["PROFILES", "ROADMAP", "Course", "Phase", "Profile", "project_root", "notebooks", "check_profile",
           "rehearsal", "setup_logging"]
