"""`--batch-size auto`: real training-step probes choose the largest batch under a memory cap."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from helpers.base.errors import UserError
from helpers.training.batch_size import BatchPlan, auto_batch, find_batch_size, plan_accumulation, step_peak_bytes

SIZE = 64


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A tiny model gains nothing from threads; on a shared 2-core machine they only wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_efficientnet", num_classes=10).to(memory_format=torch.channels_last)


@pytest.fixture(scope="module")
def peaks(model) -> dict[int, int]:
    return {b: step_peak_bytes(model, b, SIZE, "cpu") for b in (1, 2, 4, 6, 7, 8)}


def test_peak_grows_with_the_batch_and_is_repeatable(model, peaks):
    values = [peaks[b] for b in sorted(peaks)]
    assert all(a < b for a, b in zip(values, values[1:]))
    resident = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    assert peaks[1] > 3 * resident  # weights, gradients and both AdamW moments, plus activations
    assert step_peak_bytes(model, 4, SIZE, "cpu") == peaks[4]


def test_chooses_the_largest_batch_under_the_cap_and_restores_the_model(model, peaks):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    cap = (peaks[6] + peaks[7]) // 2
    assert find_batch_size(model, SIZE, "cpu", memory_cap_bytes=cap, max_batch=64) == 6
    assert find_batch_size(model, SIZE, "cpu", memory_cap_bytes=peaks[8], max_batch=5) == 5  # capped by max_batch
    assert not model.training  # modes and weights are left as they were
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.rand(3), expected)  # the random stream continues as if no probe had run


def test_keeps_the_effective_batch_with_accumulation(model, peaks):
    cap = (peaks[6] + peaks[7]) // 2
    plan = auto_batch(model, SIZE, "cpu", effective_batch=48, memory_cap_bytes=cap)
    assert plan == BatchPlan(micro_batch=6, accum_steps=8, effective_batch=48)
    assert auto_batch(model, SIZE, "cpu", effective_batch=4, memory_cap_bytes=cap) == BatchPlan(4, 1, 4)


def test_plan_accumulation():
    assert plan_accumulation(64, 20) == BatchPlan(16, 4, 64)
    assert plan_accumulation(64, 64) == BatchPlan(64, 1, 64)
    assert plan_accumulation(96, 10, world_size=2) == BatchPlan(8, 6, 96)  # 8 x 6 steps x 2 processes
    assert plan_accumulation(13, 4) == BatchPlan(1, 13, 13)  # a prime keeps its size with micro-batches of 1
    with pytest.raises(UserError, match="evenly over 4 processes"):
        plan_accumulation(30, 8, world_size=4)


class _RunsOutAbove(nn.Module):
    """A real model that raises the CUDA out-of-memory error above a batch size, as a full device does."""

    def __init__(self, inner: nn.Module, limit: int):
        super().__init__()
        self.inner, self.limit = inner, limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


def test_out_of_memory_errors_are_probes_that_do_not_fit(model):
    assert find_batch_size(_RunsOutAbove(model, 11), SIZE, "cpu", memory_cap_bytes=2**40, max_batch=64) == 11
    with pytest.raises(UserError, match="Not even a batch of 1"):
        find_batch_size(_RunsOutAbove(model, 0), SIZE, "cpu", memory_cap_bytes=2**40)
    with pytest.raises(UserError, match="Not even a batch of 1"):
        find_batch_size(model, SIZE, "cpu", memory_cap_bytes=1024)
