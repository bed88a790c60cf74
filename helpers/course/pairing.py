"""Which file of a notebook pair runs: the one the learner edited last, by jupytext's own rule.

A course notebook is a pair, `NN_slug.ipynb` + `NN_slug.py` (jupytext percent), and either may be edited. As
`jupytext --sync` does, the cells come from the newer file (the text file when both have the same time) and the
outputs and metadata from the `.ipynb`:

    found = pairing.resolve(Path("notebooks/01_baseline.ipynb"))
    found.notebook      # what runs (an nbformat notebook)
    found.inputs        # notebooks/01_baseline.py when it was edited after the .ipynb
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import Any

from ..base.errors import UserError

DEFAULT_FORMATS = "ipynb,py:percent"  # as jupytext.toml pairs the course's notebooks


@dataclasses.dataclass
class Resolved:
    """A notebook as it will run: its cells' file, and whether they differ from the `.ipynb` beside it."""

    notebook: Any  # nbformat.NotebookNode
    path: Path  # the .ipynb of the pair
    inputs: Path  # the file its cells come from
    differs: bool  # the cells of `inputs` are not those of the .ipynb (the pair is out of sync)

    def note(self) -> str:
        other = self.path if self.inputs != self.path else self.path.with_suffix(".py")
        return (f"{self.inputs} is newer than {other} and they differ: running {self.inputs.name} (sync the pair "
                f"with: jupytext --sync {shlex.quote(str(self.inputs))})")


def resolve(path: Path) -> Resolved:
    """The notebook `path` (an .ipynb) as `jupytext --sync` would make it, without writing either file.

    Raises:
        UserError: the pair cannot be read together (e.g. a text file written by a newer jupytext), naming
            both files and the command that syncs them.
    """
    import jupytext
    from jupytext.cli import get_timestamp
    from jupytext.pairs import latest_inputs_and_outputs
    from jupytext.sync_pairs import read_pair

    path = Path(path)
    try:
        own = jupytext.read(path)
        formats = own.metadata.get("jupytext", {}).get("formats") or DEFAULT_FORMATS
        inputs, outputs = latest_inputs_and_outputs(str(path), "ipynb", formats, get_timestamp)
        if not inputs.path or Path(inputs.path) == path:
            return Resolved(own, path, path, differs=_cells(own) != _cells(_read_twin(path)))
        notebook = read_pair(inputs, outputs, lambda p, fmt: own if Path(p) == path else jupytext.read(p, fmt=fmt))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - jupytext raises many types for a pair it cannot combine
        text = path.with_suffix(".py")
        raise UserError(
            f"The notebook pair {path} and {text} cannot be read together ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}). Open the one you edited last in "
            f"JupyterLab and save it, or sync the pair with: jupytext --sync {shlex.quote(str(text))}"
        ) from None
    return Resolved(notebook, path, Path(inputs.path), differs=_cells(notebook) != _cells(own))


def _read_twin(path: Path) -> Any:
    import jupytext

    text = path.with_suffix(".py")
    return jupytext.read(text) if text.is_file() else jupytext.read(path)


def _cells(notebook: Any) -> list[tuple[str, str]]:
    """The cells as jupytext compares a pair: type and source (outputs and metadata aside)."""
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


__all__ = ["Resolved", "resolve"]
