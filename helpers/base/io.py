"""Atomic file writes: a file is either its previous complete version or its new complete version.

Every file the package writes into a run folder or a prepared dataset goes through `atomic_open` or `atomic_path` (or the
`atomic_write_bytes` / `atomic_write_text` shortcuts): the content goes to a hidden temporary file next to the
target (`.NAME.tmp`), is flushed to disk, then renamed over the target in one step. Whatever goes wrong in
between (a full disk, a read-only file system, missing permissions, Ctrl-C, an exception) removes the temporary
file and leaves the previous file as it was. Disk and permission failures become a `WriteError` (a UserError:
one paragraph, exit code 2) naming the file and what to do; an interrupt stays a KeyboardInterrupt (exit 130).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import UserError

# errno values that mean "the disk or its permissions", not a bug: a retry without a fix fails the same way.
DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG, errno.EIO,
               errno.ENAMETOOLONG, errno.ENOENT, errno.ENOTDIR, errno.EISDIR}

_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space (or give another --output-dir on a larger disk)",
    errno.EDQUOT: "the disk quota is used up: free some space or raise the quota",
    errno.EFBIG: "the file is larger than this file system allows: write to another disk",
    errno.EROFS: "the file system is read-only: give a folder on a writable disk",
    errno.EACCES: "you lack permission to write there: fix the folder's permissions or give another folder",
    errno.EPERM: "the operation is not permitted there: fix the folder's permissions or give another folder",
    errno.EIO: "the disk reported an input/output error: check the disk, or write to another one",
}

_TORCH_ENOSPC = ("No space left on device", "file write failed", "unexpected pos", "PytorchStreamWriter failed")


class WriteError(UserError):
    """A file could not be written (disk full, read-only, permissions); the previous file is kept."""


def describe_os_error(exc: OSError, path: str | Path, *, folder: bool = False) -> str:
    """One paragraph for a failed write of `path` (or creation of the folder `path`): what happened, what to do."""
    reason = exc.strerror or str(exc)
    advice = _ADVICE.get(exc.errno or 0, "check that the path is right and on a disk you can write to")
    if folder:
        return f"Could not create the folder {path} ({reason}): {advice}. Nothing was written."
    return (f"Could not write {path} ({reason}): {advice}. The previous version of the file is kept and no "
            "temporary file is left behind; after the fix, run the same command again (training: with --resume "
            "auto, which continues from the last checkpoint).")


def as_write_error(exc: BaseException, path: str | Path) -> WriteError | None:
    """The WriteError for `exc` if it is a disk or permission failure (torch's writer turns ENOSPC into a
    RuntimeError, which is recognised by its message), else None."""
    if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
        return WriteError(describe_os_error(exc, path))
    if isinstance(exc, RuntimeError) and any(s in str(exc) for s in _TORCH_ENOSPC):
        return WriteError(describe_os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path))
    return None


def file_status(path: str | Path) -> list[int]:
    """[device, inode, size, modification time in ns] of a file: it is the same file, unchanged, while these are
    (an atomic replace makes a new inode). Raises OSError when it cannot be read."""
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def temp_name(path: str | Path) -> Path:
    """The temporary file next to `path` that `atomic_path` writes first: `.NAME.tmp`."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | Path, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write (for writers that take a path); on success it replaces `path` in one step.

    Args:
        path: the file to write (its folder must exist).
        durable: fsync the file and its folder, so the new version survives a power cut.

    Raises:
        WriteError: a disk or permission failure (the previous `path` is kept, the temporary file removed).
    """
    with _replacing(path, durable=durable) as tmp:
        yield tmp
        if durable:
            _fsync_file(tmp)


@contextlib.contextmanager
def atomic_open(path: str | Path, *, durable: bool = True) -> Iterator[BinaryIO]:
    """Yield a binary file to write; on success it is flushed to disk and replaces `path` in one step.

    Raises:
        WriteError: as `atomic_path`.
    """
    with _replacing(path, durable=durable) as tmp:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            if durable:
                full_fsync(f.fileno())


@contextlib.contextmanager
def _replacing(path: str | Path, *, durable: bool) -> Iterator[Path]:
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
        if durable:
            fsync_folder(path.parent)
    except BaseException as exc:  # also KeyboardInterrupt: never leave a torn temporary file behind
        with contextlib.suppress(OSError):
            tmp.unlink()
        error = as_write_error(exc, path)
        if error is not None:
            raise error from exc
        raise


def atomic_write_bytes(path: str | Path, data: bytes, *, durable: bool = True) -> None:
    """Write `data` to `path` atomically (see `atomic_open`)."""
    with atomic_open(path, durable=durable) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str, *, durable: bool = True) -> None:
    """Write `text` (UTF-8; file names with undecodable bytes are written back as the same bytes) atomically."""
    atomic_write_bytes(path, text.encode("utf-8", errors="surrogateescape"), durable=durable)


def full_fsync(fd: int) -> None:
    """Flush a file to the disk itself. On macOS `fsync` only hands the data to the drive, whose cache can still
    lose it at a power cut (fsync(2): "use F_FULLFSYNC"), so there `fcntl(F_FULLFSYNC)` is used; a file system
    that refuses it (some network shares) gets the plain `fsync`."""
    if sys.platform == "darwin":
        import fcntl

        command = getattr(fcntl, "F_FULLFSYNC", None)
        if command is not None:
            try:
                fcntl.fcntl(fd, command)
                return
            except OSError:
                pass
    os.fsync(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        full_fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: str | Path) -> None:
    """Flush a folder's entries, so a rename survives a power cut, not only a killed process."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; its os.replace is durable enough
        return
    try:
        full_fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = ["WriteError", "atomic_path", "atomic_open", "atomic_write_bytes", "atomic_write_text", "as_write_error",
           "describe_os_error", "fsync_folder", "full_fsync", "temp_name"]
