"""A notebook's parameters cell read without running it: the literals it sets (`parameters`), for `run-notebooks`
(checking `-p` names, the runs a notebook needs), the setup notebook's weight checks and the tests. A value
that is not a literal is refused naming its line."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base.errors import UserError

if TYPE_CHECKING:
    pass



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
                    and len(target.elts) == len(node.value.elts):  # a, b = 1, 2: two settings
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
