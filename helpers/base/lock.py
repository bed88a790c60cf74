"""One writer per run folder: an OS lock (`fcntl.flock`) on `FOLDER/.lock`, held while a command writes there.

    with run_lock("runs/b3"):          # a second process (or a second `with` in this one) stops with exit 2
        ...


`helpers.training.engine.fit` holds it for its whole call (`engine.locked_output`).
The lock file holds the holder's pid, host, command and start time, so a refused run can name it. The kernel
drops the lock when its process ends, however it ends (even SIGKILL), so a lock left by a dead process is taken
over at once; the file itself is removed on release (and the folder too, when the locked command created it
and left it empty). Under torchrun only rank 0 takes the lock (the other ranks write nothing). Where the file
system has no locks (some network mounts) the run goes on with a warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs go on unlocked (see the module docstring)
    fcntl = None

_logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class FolderBusyError(UserError):
    """Another live process holds the folder's lock."""


def _holder(lock_file: Path) -> str:
    try:
        info = json.loads(lock_file.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process (it has not written its details yet)"
    return (f"process {info.get('pid')} on {info.get('host')} (started {info.get('started')}: "
            f"{info.get('command')})")


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def run_lock(folder: str | Path, what: str | None = None) -> Iterator[Path | None]:
    """Hold the lock of `folder` (created when missing) for the `with` block.

    Args:
        folder: the run folder (or any output folder) to write into.
        what: how to name the folder in messages, e.g. "--output-dir runs/x".

    Raises:
        FolderBusyError: another live process holds it (one paragraph naming that process; exit code 2).
    """
    folder = Path(folder)
    what = what or str(folder)
    if fcntl is None or not _is_main_rank():
        yield None
        return
    from .io import WriteError, describe_os_error

    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} is a file. Give a folder (it is created when missing).")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(describe_os_error(exc, folder, folder=True)) from exc
    lock_file = folder / LOCK_NAME
    fd = _acquire(lock_file, what)
    try:
        yield lock_file if fd is not None else None
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                lock_file.unlink()  # before unlocking: a waiting process then sees a new inode and retries
            os.close(fd)  # closing drops the flock
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: a command that stopped before writing leaves no folder


def _acquire(lock_file: Path, what: str) -> int | None:
    """Open and flock `lock_file`; retry when it was replaced meanwhile (a holder released and removed it)."""
    from .io import WriteError, describe_os_error

    for _ in range(20):
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise WriteError(describe_os_error(exc, lock_file)) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderBusyError(
                f"{what} is in use by {_holder(lock_file)}. Two runs writing into one folder would mix their "
                f"checkpoints and metrics. Wait for it to finish (or stop it), or give another folder. If that "
                f"process is gone, the lock is released by the system and the next try takes it over."
            ) from None
        except OSError as exc:  # e.g. ENOLCK, EOPNOTSUPP on network file systems
            os.close(fd)
            _logger.warning("Could not lock %s (%s): nothing stops a second run from writing into the same folder",
                            lock_file, exc.strerror or exc)
            return None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_file).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder removed the file between our open and our lock: try the new file
            os.close(fd)
            continue
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": _command()}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode("utf-8", errors="surrogateescape"))
        return fd
    raise FolderBusyError(f"{what}: could not take the lock {lock_file} (it keeps being replaced). Try again.")


def _command() -> str:
    argv = list(sys.argv)
    if argv and argv[0].endswith("__main__.py"):
        argv[0] = "python -m " + Path(argv[0]).parent.name
    return " ".join(argv) or sys.executable
