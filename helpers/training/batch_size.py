"""Choosing the micro-batch: the largest batch whose training step fits in memory, and the gradient accumulation
that keeps the requested effective batch (`--batch-size auto`).

    plan = auto_batch(model, 300, device, effective_batch=64, amp_dtype=torch.float16)
    # e.g. BatchPlan(micro_batch=16, accum_steps=4, effective_batch=64)

Every probe is a real training step (forward, backward, AdamW step) on synthetic tensors at the training
resolution, so activations, gradients and optimizer state are all counted. The model's weights, buffers and
train/eval modes are restored afterwards. A batch fits when the step raises no out-of-memory error and its
peak stays within the memory cap. Peak memory is measured per device:

- CUDA: `torch.cuda.max_memory_allocated`, reset before each probe (live tensor bytes, parameters included).
  Default cap: 90% of the card's memory, leaving room for the allocator's fragmentation.
- MPS: there is no peak counter, so `torch.mps.driver_allocated_memory()` is sampled after the forward, the
  backward and the optimizer step, and the largest sample is taken. It includes the allocator's cache, which errs
  on the safe side. Default cap: 90% of `torch.mps.recommended_max_memory()`; past that macOS starts to swap
  long before PYTORCH_MPS_HIGH_WATERMARK_RATIO stops the process (see docs/performance.md).
- CPU: a TorchDispatchMode adds the bytes of every tensor storage the step creates and subtracts them when the
  storage is freed; the peak of that sum plus the parameters and buffers already resident is the estimate.
  It counts tensors only (not the allocator's slack nor Python objects), like CUDA's counter. Default cap: 80%
  of the RAM available when the probe starts (Linux; none elsewhere). CPU probes are slow (one real step
  each), so on CPU `--batch-size auto` is mainly useful with small models and for testing.
"""

from __future__ import annotations

import gc
import logging
import os
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..base.devices import autocast, fused_adamw
from ..base.errors import UserError
from ..base.mps_check import device_code

_logger = logging.getLogger(__name__)

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's images are split.

    Attributes:
        micro_batch: images per forward/backward pass on each process.
        accum_steps: micro-batches accumulated per optimizer step.
        effective_batch: images per optimizer step over all processes (micro_batch x accum_steps x world size).
    """

    micro_batch: int
    accum_steps: int
    effective_batch: int


def plan_accumulation(effective_batch: int, max_micro_batch: int, world_size: int = 1) -> BatchPlan:
    """The fewest accumulation steps that keep `effective_batch` exactly with micro-batches that fit.

    Args:
        effective_batch: images per optimizer step over all processes, e.g. 64.
        max_micro_batch: the largest micro-batch that fits one process, e.g. 20 (from `find_batch_size`).
        world_size: number of processes sharing each optimizer step.

    Returns:
        e.g. plan_accumulation(64, 20) == BatchPlan(micro_batch=16, accum_steps=4, effective_batch=64).

    Raises:
        UserError: `effective_batch` is not a multiple of `world_size`, or an argument is not positive.
    """
    if effective_batch <= 0 or max_micro_batch <= 0 or world_size <= 0:
        raise UserError(f"Batch sizes must be positive (effective {effective_batch}, micro {max_micro_batch}, "
                        f"processes {world_size}).")
    if effective_batch % world_size:
        raise UserError(f"The batch of {effective_batch} images cannot be split evenly over {world_size} processes: "
                        "give a multiple of the number of processes.")
    per_process = effective_batch // world_size
    for accum in range(1, per_process + 1):  # accum == per_process always works (micro-batch 1)
        if per_process % accum == 0 and per_process // accum <= max_micro_batch:
            return BatchPlan(per_process // accum, accum, effective_batch)
    raise AssertionError("unreachable")


def find_batch_size(model: nn.Module, image_size: int, device: torch.device | str, *, start: int = 2,
                    max_batch: int = 256, memory_cap_bytes: int | None = None, channels_last: bool = True,
                    amp_dtype: torch.dtype | None = None, optimizer_factory: OptimizerFactory | None = None) -> int:
    """The largest micro-batch in [1, max_batch] whose training step fits the device.

    Doubles from `start` until a probe fails (out of memory, or a peak above the cap) or `max_batch` is reached,
    then bisects between the last batch that fitted and the first that did not: about 2 log2(max_batch) probes.

    Args:
        model: the model, already on `device` (in its training memory format); its weights are restored.
        image_size: training resolution in pixels (inputs are (B, 3, image_size, image_size)).
        device: where to probe.
        start: first batch tried.
        max_batch: never return more than this (e.g. the requested effective batch).
        memory_cap_bytes: a batch fits only if its peak is at most this; None: the device default above.
        channels_last: feed channels-last inputs, as the trainer does.
        amp_dtype: the autocast dtype of training (None: full precision).
        optimizer_factory: builds the training optimizer from parameters; default AdamW (fused on CUDA only, see utils.fused_adamw).

    Returns:
        The batch size, at least 1.

    Raises:
        UserError: not even a batch of 1 fits.
    """
    device = torch.device(device)
    cap = memory_cap_bytes if memory_cap_bytes is not None else default_memory_cap(device)

    def fits(batch: int) -> bool:
        peak = _probe(model, batch, image_size, device, channels_last=channels_last, amp_dtype=amp_dtype,
                      optimizer_factory=optimizer_factory)
        ok = peak is not None and (cap is None or peak <= cap)
        _logger.info("batch %d: %s", batch, "out of memory" if peak is None else
                     f"peak {peak / 2**20:.0f} MB{f' (cap {cap / 2**20:.0f} MB)' if cap else ''}"
                     f"{'' if ok else ', does not fit'}")
        return ok

    good, bad, batch = 0, None, max(1, min(start, max_batch))
    while True:
        if not fits(batch):
            bad = batch
            break
        good = batch
        if batch >= max_batch:
            break
        batch = min(batch * 2, max_batch)
    if bad is not None:
        lo, hi = good, bad
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        good = lo
    if good == 0:
        limit = f"the {cap / 2**20:.0f} MB cap" if cap else "memory"
        raise UserError(f"Not even a batch of 1 at {image_size} px fits {limit} on {device}. Use a smaller "
                        "--image-size or backbone, turn on --amp, or free the device.")
    _logger.info("Largest batch that fits on %s at %d px: %d", device, image_size, good)
    return good


def auto_batch(model: nn.Module, image_size: int, device: torch.device | str, *, effective_batch: int | None,
               world_size: int = 1, max_batch: int = 256, **probe_kwargs) -> BatchPlan:
    """`--batch-size auto`: the largest micro-batch that fits, and the accumulation that keeps `effective_batch`.

    Args:
        effective_batch: images per optimizer step over all processes; None: the largest batch that fits on each
            process, without accumulation.
        world_size: processes sharing each optimizer step (each probes its own device).
        max_batch: the largest micro-batch considered when `effective_batch` is None.
        **probe_kwargs: start, memory_cap_bytes, channels_last, amp_dtype, optimizer_factory (see find_batch_size).
    """
    if effective_batch is not None and effective_batch % world_size:
        plan_accumulation(effective_batch, 1, world_size)  # raises the UserError
    limit = effective_batch // world_size if effective_batch is not None else max_batch
    fits = find_batch_size(model, image_size, device, max_batch=limit, **probe_kwargs)
    if effective_batch is None:
        return BatchPlan(fits, 1, fits * world_size)
    plan = plan_accumulation(effective_batch, fits, world_size)
    _logger.info("Batch %d = %d x %d accumulation steps x %d process(es)", effective_batch, plan.micro_batch,
                 plan.accum_steps, world_size)
    return plan


def default_memory_cap(device: torch.device) -> int | None:
    """The memory a training step may use by default on `device` (see the module docstring), in bytes."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * 0.9)
    if device.type == "mps":
        return int(torch.mps.recommended_max_memory() * 0.9)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 0.8)
    except (ValueError, OSError, AttributeError):  # macOS and Windows lack SC_AVPHYS_PAGES
        return None


def step_peak_bytes(model: nn.Module, batch_size: int, image_size: int, device: torch.device | str, *,
                    channels_last: bool = True, amp_dtype: torch.dtype | None = None,
                    optimizer_factory: OptimizerFactory | None = None) -> int | None:
    """Peak memory of one training step at `batch_size` (measured as in the module docstring), in bytes.

    Returns:
        The peak in bytes, or None when the step ran out of memory. The model is left as it was.
    """
    return _probe(model, batch_size, image_size, torch.device(device), channels_last=channels_last,
                  amp_dtype=amp_dtype, optimizer_factory=optimizer_factory)


# ----------------------------------------------------------------------------------------------------------------
# One probe


@device_code
def _probe(model: nn.Module, batch: int, image_size: int, device: torch.device, *, channels_last: bool,
           amp_dtype: torch.dtype | None, optimizer_factory: OptimizerFactory | None) -> int | None:
    saved = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    modes = {m: m.training for m in model.modules()}
    rng = _rng_state(device)  # probes draw random inputs and dropout masks: training's random stream is kept
    _release(device)
    try:
        return _measured_step(model, batch, image_size, device, channels_last, amp_dtype, optimizer_factory)
    except RuntimeError as exc:  # torch.OutOfMemoryError (CUDA) is one; MPS raises a plain RuntimeError
        if not _is_out_of_memory(exc):
            raise
        return None
    finally:
        model.load_state_dict(saved)
        for m, training in modes.items():
            m.training = training
        for p in model.parameters():
            p.grad = None
        _set_rng_state(device, rng)
        _release(device)


def _rng_state(device: torch.device) -> tuple:
    if device.type == "cuda":
        return torch.get_rng_state(), torch.cuda.get_rng_state(device)
    if device.type == "mps":
        return torch.get_rng_state(), torch.mps.get_rng_state()
    return (torch.get_rng_state(),)


def _set_rng_state(device: torch.device, state: tuple) -> None:
    torch.set_rng_state(state[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[1], device)
    elif device.type == "mps":
        torch.mps.set_rng_state(state[1])


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _release(device: torch.device) -> None:
    """Hand cached blocks back so the next probe starts from the same state (the CPU probe counts its own)."""
    if device.type == "cpu":
        return
    gc.collect()  # tensors held by reference cycles (e.g. an out-of-memory traceback) before emptying the cache
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    elif device.type == "mps":
        torch.mps.empty_cache()


def _measured_step(model: nn.Module, batch: int, image_size: int, device: torch.device, channels_last: bool,
                   amp_dtype: torch.dtype | None, optimizer_factory: OptimizerFactory | None) -> int:
    """One forward/backward/step with the optimizer's state already allocated, as in the steady state of
    training (a fresh optimizer would create it only after the backward pass, when activations are freed);
    returns the peak bytes."""
    meter = _PeakMeter(device, model)
    with meter:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = (optimizer_factory or _default_optimizer(device))(params)
        for p in params:  # a first step creates the optimizer's state, which is live during every later step
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        images = torch.randn(batch, 3, image_size, image_size, device=device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        model.train()
        with autocast(device, amp_dtype):
            logits = model(images)
            labels = torch.randint(0, logits.shape[-1], (batch,), device=device)
            loss = nn.functional.cross_entropy(logits.float(), labels)
        meter.sample()
        loss.backward()
        meter.sample()
        optimizer.step()
        meter.sample()
        optimizer.zero_grad(set_to_none=True)
        del optimizer, images, logits, labels, loss
    return meter.peak


def _default_optimizer(device: torch.device) -> OptimizerFactory:
    fused = fused_adamw(device)
    return lambda params: torch.optim.AdamW(params, lr=1e-3, fused=fused)


class _PeakMeter:
    """Context manager measuring the peak memory of the code inside it on one device (see the module docstring)."""

    def __init__(self, device: torch.device, model: nn.Module):
        self.device, self.peak = device, 0
        self._tracker = _TensorBytes() if device.type == "cpu" else None
        self._resident = _storage_bytes(model) if device.type == "cpu" else 0

    def __enter__(self) -> _PeakMeter:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        if self._tracker is not None:
            self._tracker.__enter__()
        return self

    def sample(self) -> None:
        if self.device.type == "mps":
            torch.mps.synchronize()
            self.peak = max(self.peak, torch.mps.driver_allocated_memory())

    def __exit__(self, *exc) -> bool:
        if self._tracker is not None:
            self._tracker.__exit__(*exc)
            self.peak = self._resident + self._tracker.peak
        elif self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        return False


def _storage_bytes(model: nn.Module) -> int:
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in (*model.parameters(), *model.buffers())}
    return sum(storages.values())


class _TensorBytes(TorchDispatchMode):
    """Counts the bytes of live CPU tensor storages created inside the mode; `peak` is their largest sum.

    Every op's outputs pass through `__torch_dispatch__` (the autograd engine's included, as the mode is
    propagated to its thread); a weakref finalizer on each new storage takes its bytes off when it is freed.
    """

    def __init__(self):
        super().__init__()
        self.current = self.peak = 0
        self._live: dict[int, weakref.finalize] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self._live:
                    size = storage.nbytes()
                    self.current += size
                    self.peak = max(self.peak, self.current)
                    self._live[key] = weakref.finalize(storage, self._freed, key, size)
        return out

    def _freed(self, key: int, size: int) -> None:
        if self._live.pop(key, None) is not None:
            self.current -= size

    def __exit__(self, *exc):
        for finalizer in list(self._live.values()):
            finalizer.detach()  # storages that outlive the probe must not call back into a finished tracker
        self._live.clear()
        return super().__exit__(*exc)
