"""Apple MPS's limits, enforced on any device: `HELPERS_CHECK_MPS=1` makes device code refuse what MPS refuses.

The workbook is written for Macs (`--device mps`), but tests and CI run on CPU, where float64 and every operator
work. Under `HELPERS_CHECK_MPS=1` (inherited by subprocesses and papermill kernels) the regions of the package that
run on the training device (functions decorated with `device_code`, or code inside `watch(...)`: the train step
and its loss, validation, evaluate/TTA/ensemble prediction, distillation, EMA, feature extraction, the probe's
L-BFGS, `--batch-size auto`'s search, bench's device sections, distributed reductions) are watched, and the first
of these stops the run with `MPSViolation` (exit code 1, a bug of the package), naming the operator and the
helpers function that issued it:

- a float64 or complex128 result: MPS has no float64 ("Cannot convert a MPS Tensor to float64 dtype as the MPS
  framework doesn't support float64", pytorch issue 122602);
- a `non_blocking=True` copy from host memory that is not pinned: on MPS the copy may read the host buffer after
  it was freed or reused (pytorch issues 139550, 189690), silently corrupting images, labels or features;
- an operator that MPS runs on the CPU or lacks (`MPS_CPU_FALLBACK`).

Host-side code inside a region (a reduction that runs on CPU tensors by design) opts out with `host()`.
The checks are a `TorchDispatchMode` (every aten operator, forward and backward, sees its results) and a
`TorchFunctionMode` (sees `Tensor.to(..., non_blocking=True)`, which on the CPU returns the same tensor without
dispatching any operator). With the variable unset nothing is entered: one dictionary lookup per region.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

ENV = "HELPERS_CHECK_MPS"

REFUSED_DTYPES = {torch.float64: "float64", torch.complex128: "complex128"}

# Operators the MPS backend does not run on the GPU: pytorch's aten/src/ATen/mps/MPSFallback.mm registers these
# with `mps_fallback` (always run on the CPU, with copies both ways); any other operator without an MPS kernel
# fails with "The operator ... is not currently implemented for the MPS device" (tracked in pytorch issues 77764
# and 141287), which on a Mac shows at once. Names are aten overload packets, without the "aten::" prefix.
MPS_CPU_FALLBACK = frozenset({"embedding_renorm_", "linalg_svd", "col2im", "upsample_nearest3d"})

_PACKAGE = str(Path(__file__).resolve().parents[1])  # helpers/
_THIS = str(Path(__file__).resolve())

_F = TypeVar("_F", bound=Callable)


class MPSViolation(Exception):
    """Device code did what the MPS backend cannot do (a bug of the package: exit code 1)."""


def enabled() -> bool:
    """Whether `HELPERS_CHECK_MPS` is set to something other than empty or 0."""
    return os.environ.get(ENV, "") not in ("", "0")


class _State(threading.local):
    def __init__(self) -> None:
        self.regions: list[str] = []
        self.violation: str | None = None
        self.paused = 0


_state = _State()


def _caller() -> str:
    """The innermost frame of the helpers package (and the innermost frame outside torch, when that differs),
    as `module.function (file:line)`."""
    frame, helper, outside = sys._getframe(2), None, None
    while frame is not None and helper is None:
        file = str(Path(frame.f_code.co_filename).resolve()) if not frame.f_code.co_filename.startswith("<") else ""
        if file.startswith(_PACKAGE) and file != _THIS:
            module = "helpers." + Path(file).relative_to(_PACKAGE).with_suffix("").as_posix().replace("/", ".")
            helper = f"{module}.{frame.f_code.co_name} ({Path(file).name}:{frame.f_lineno})"
        elif outside is None and file and "/torch/" not in file and "/timm/" not in file and file != _THIS:
            outside = f"{frame.f_code.co_name} ({Path(file).name}:{frame.f_lineno})"
        frame = frame.f_back
    where = helper or "an unknown function"
    if outside is not None and (helper is None or outside.split(" (")[0] not in helper):
        where += f", called through {outside}"
    return where


def _refuse(problem: str, advice: str) -> None:
    region = _state.regions[-1] if _state.regions else "?"
    message = (f"HELPERS_CHECK_MPS: {problem} in {_caller()}, in the device region {region}. {advice} "
               f"(Unset {ENV} to run without this check.)")
    if _state.violation is None:
        _state.violation = message
    raise MPSViolation(message)


class _DispatchCheck(TorchDispatchMode):
    """Every aten operator in a region: refuse float64/complex128 results and CPU-fallback operators."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if _state.paused:
            return out
        fallback = _FALLBACK.get(func)
        if fallback is None:  # once per operator overload: the name test is most of a cheap operator's check
            fallback = _FALLBACK[func] = func.__name__.split(".")[0] in MPS_CPU_FALLBACK
        if fallback:
            _refuse(f"aten.{func.__name__.split('.')[0]} (which MPS runs on the CPU, per pytorch's MPSFallback.mm)",
                    "Avoid the operator in device code, or move its inputs to the CPU explicitly.")
        if isinstance(out, torch.Tensor):  # most operators: one tensor, no tree to flatten
            if out.dtype in REFUSED_DTYPES:
                _refuse_dtype(func, out)
        elif out is not None:
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.dtype in REFUSED_DTYPES:
                    _refuse_dtype(func, t)
        return out


_FALLBACK: dict = {}  # operator overload -> whether MPS runs it on the CPU


def _refuse_dtype(func, t: torch.Tensor) -> None:
    _refuse(f"aten.{func.__name__} made a {REFUSED_DTYPES[t.dtype]} tensor",
            "MPS has no float64 or complex128: keep device tensors float32 (or int64 for counts), and "
            "convert to float64 on the host only (after .cpu()/.item()).")


_COPIES = {torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.copy_}


def _non_blocking(func, args, kwargs) -> bool:
    if kwargs.get("non_blocking"):
        return True
    if func is torch.Tensor.copy_:
        return len(args) > 2 and bool(args[2])
    return any(isinstance(a, bool) and a for a in args[1:2] + args[2:3])  # to(dtype, nb) / to(device, dtype, nb)


class _FunctionCheck(TorchFunctionMode):
    """`Tensor.to/.cuda/.copy_` with non_blocking=True: refused unless the host source is pinned."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _COPIES and not _state.paused and _non_blocking(func, args, kwargs):
            source = args[1] if func is torch.Tensor.copy_ else args[0]
            if isinstance(source, torch.Tensor) and source.device.type == "cpu" and not _pinned(source):
                _refuse(f"Tensor.{func.__name__}(non_blocking=True) copied from host memory that is not pinned",
                        "On MPS such a copy can read the buffer after it is freed (pytorch issues 139550, 189690). "
                        "Copy with non_blocking only from pinned memory (helpers.base.devices.to_device).")
        return func(*args, **kwargs)


def _pinned(t: torch.Tensor) -> bool:
    try:
        return t.is_pinned()
    except RuntimeError:  # no accelerator to pin for
        return False


@contextlib.contextmanager
def watch(region: str) -> Iterator[None]:
    """Watch the code inside for MPS faults when `HELPERS_CHECK_MPS` is set (a no-op otherwise).

    Args:
        region: the device region's name for messages, e.g. "engine.train_one_epoch".
    Raises:
        MPSViolation: at the first fault, also when the code inside caught and swallowed it.
    """
    if not enabled():
        yield
        return
    _state.regions.append(region)
    outer = len(_state.regions) == 1
    try:
        if not outer:
            yield
            return
        _state.violation = None
        with _FunctionCheck(), _DispatchCheck():
            yield
        if _state.violation is not None:  # raised inside, then caught by the code (e.g. an OOM handler)
            raise MPSViolation(_state.violation)
    finally:
        _state.regions.pop()


@contextlib.contextmanager
def host() -> Iterator[None]:
    """Host-side code inside a watched region (CPU tensors by design, e.g. a gloo reduction): not checked."""
    _state.paused += 1
    try:
        yield
    finally:
        _state.paused -= 1


def device_code(fn: _F) -> _F:
    """Decorator: `fn` runs on the training device; under `HELPERS_CHECK_MPS=1` it is watched (see `watch`)."""
    region = f"{fn.__module__.removeprefix('helpers.')}.{fn.__qualname__}"

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not enabled():
            return fn(*args, **kwargs)
        with watch(region):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


__all__ = ["ENV", "MPS_CPU_FALLBACK", "MPSViolation", "device_code", "enabled", "host", "watch"]
