"""Where a notebook's run trains: the course's run keeps its name, a changed setting trains beside it in a folder named
after the change, and a run that repeats one already trained in the course is reused.

    models/01_baseline/baseline              the course's run: the first run of that name (later notebooks read it)
    models/01_baseline/baseline~lr=0.0003    the same run with TECHNIQUE["lr"] = 3e-4 (a Try it), beside it
    models/01_baseline/baseline~epochs=8~lr=0.0003
    models/02_b3_upgrade/resnet50~teacher=...~3f9c2a1b   a long list of changes: the first ones and a hash

A run's identity is what it computes: every TrainConfig setting except the runtime ones (`RUNTIME_FIELDS`: the
device, workers, folders), the data folder, and the run it starts from (`start_from`). The course folder keeps an
index of the identities it named (`run-names.json`, written by `Course.config`, never inside a run's folder), so a
re-run with the same settings continues or re-tests its folder, other settings get their own folder, and a control
whose identity equals a run the course has named already uses that run instead of training it again.

Cached features and probes (notebook 10) are named the same way: a readable prefix and a hash of every setting they
depend on (`cache_folder`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

from ..base.config import TrainConfig

_logger = logging.getLogger(__name__)

INDEX = "run-names.json"  # in the course folder: {folder relative to it: identity}
MAX_NAME = 64  # characters of a folder name before the list of changes is cut and hashed


def identity(cfg: TrainConfig, start_from: str | Path | None = None) -> dict[str, Any]:
    """What a run computes: its non-runtime settings, its data folder and the run it starts from (JSON values)."""
    from ..training.run_folder import RUNTIME_FIELDS

    values = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUNTIME_FIELDS}
    values["data"] = str(Path(cfg.data_dir).expanduser().resolve())
    values["start_from"] = str(Path(start_from).resolve()) if start_from is not None else None
    return json.loads(json.dumps(values, default=str))  # tuples as lists: what the index reads back


def choose(course_dir: Path, notebook: str, run: str, ident: dict[str, Any]) -> Path:
    """The folder a run of `notebook` named `run` trains in, claimed in the course's index (the reason is logged).

    The course's run is the first one of its name (`models/<notebook>/<run>`). A run whose identity equals it
    continues there; one whose identity equals another run the course has named (trained, or to be trained by an
    earlier cell) is that run, reused; any other trains in `models/<notebook>/<run>~<setting>=<value>...`, named
    after what differs from the course's run.
    """
    index = _read(course_dir)
    home = course_dir / "models" / notebook / run
    home_id = _known(course_dir, home, index, ident)
    if home_id == ident:
        return home
    twin = next((course_dir / rel for rel, other in index.items() if other == ident), None)
    if twin is not None:
        done = "trained already" if (twin / "summary.json").is_file() else "named already (trained once, there)"
        _logger.info("%s/%s: the same settings, data and start as %s, which this course %s: it is that run, "
                     "reused rather than trained twice", notebook, run, _rel(course_dir, twin), done)
        return twin
    if home_id is None:
        _write(course_dir, {**index, _rel(course_dir, home): ident})
        return home
    changes = {k: v for k, v in ident.items() if home_id.get(k) != v}
    folder = home.parent / folder_name(run, changes)
    if _known(course_dir, folder, index, ident) not in (None, ident):  # the same name for other settings: rare
        folder = home.parent / f"{folder.name}~{_digest(ident)}"
    _write(course_dir, {**index, _rel(course_dir, folder): ident})
    _logger.info("%s/%s: the course's %s (%s) has other settings; these (%s) train in %s, and later notebooks keep "
                 "reading the course's run", notebook, run, run, _rel(course_dir, home), describe(changes, home_id),
                 _rel(course_dir, folder))
    return folder


def folder_name(run: str, changes: dict[str, Any]) -> str:
    """`run~key=value~...` in key order, e.g. "baseline~lr=0.0003"; past `MAX_NAME` characters, the changes that fit
    and a hash of them all."""
    parts = [f"{key}={_short(value)}" for key, value in sorted(changes.items())]
    name = "~".join([run, *parts])
    if len(name) <= MAX_NAME:
        return name
    kept: list[str] = []
    for part in parts:
        if len("~".join([run, *kept, part])) + 9 <= MAX_NAME:
            kept.append(part)
    return "~".join([run, *kept, _digest(changes)])


def describe(changes: dict[str, Any], before: dict[str, Any] | None = None) -> str:
    """"lr 0.003 → 0.0003, epochs 4 → 8": what differs, for the log line."""
    return ", ".join(f"{k} {_short(before.get(k)) if before else '?'} → {_short(v)}" for k, v in sorted(changes.items()))


def cache_folder(course_dir: Path, notebook: str, prefix: str, readable: list[Any], settings: dict[str, Any]) -> Path:
    """`models/<notebook>/<prefix>-<readable parts>-<hash of settings>`: a cache (features, a probe) keyed by every
    setting it depends on, so changing one computes a new cache beside the old one."""
    name = "-".join([prefix, *(_short(r) for r in readable), _digest(settings)])
    return course_dir / "models" / notebook / name


def _known(course_dir: Path, folder: Path, index: dict[str, Any], ident: dict[str, Any]) -> dict[str, Any] | None:
    """The identity of the run in `folder`: from the index, else from its config.yaml (a folder trained before the
    index: its data and start are taken as `ident`'s), None when the folder holds no run."""
    if _rel(course_dir, folder) in index:
        return index[_rel(course_dir, folder)]
    config = folder / "config.yaml"
    if not config.is_file():
        return None
    import yaml

    from ..base.config import config_from_dict

    saved = config_from_dict(yaml.safe_load(config.read_text()) or {})
    return {**identity(saved), "data": ident["data"], "start_from": ident["start_from"]}


def _read(course_dir: Path) -> dict[str, Any]:
    path = course_dir / INDEX
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:  # a torn index: the run folders' config.yaml still say what they hold
        _logger.warning("%s is not valid JSON: naming runs from their config.yaml files", path)
        return {}


def _write(course_dir: Path, index: dict[str, Any]) -> None:
    from ..base.io import atomic_write_text

    course_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(course_dir / INDEX, json.dumps(index, indent=1, sort_keys=True))


def _rel(course_dir: Path, folder: Path) -> str:
    return folder.relative_to(course_dir).as_posix()


def _digest(value: Any) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _short(value: Any) -> str:
    """A setting's value in a folder name: numbers as `:g`, paths by their folder's name, lists by their length."""
    if isinstance(value, bool) or value is None:
        text = str(value)
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (list, tuple)):
        text = f"{len(value)}runs" if value and all("/" in str(v) for v in value) else "+".join(map(_short, value))
    else:
        text = str(value)
        if "/" in text or "\\" in text:
            path = Path(text)
            text = path.parent.name if path.name in ("best.pt", "last.pt") else path.name
    return re.sub(r"[^A-Za-z0-9._+=-]+", "_", text)


__all__ = ["INDEX", "cache_folder", "choose", "describe", "folder_name", "identity"]
