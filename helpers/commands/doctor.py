"""`python -m helpers doctor`: does this device train like the CPU? The first thing to run on a Mac before a night.

    python -m helpers doctor                  # the device `auto` picks (mps on a Mac) against the CPU
    python -m helpers doctor --device cpu     # the CPU against itself (what CI runs)

From the same starting weights and the same real batch, the trainer's own step (`engine.train_step`: the
device's memory format, optimizer and normalisation) runs a few times on the device and on the CPU in float32;
the losses, the gradients and the updated weights must agree within `TOLERANCES`. The device's mixed precision
(fp16 on MPS) is compared on the logits of one forward pass, with its looser tolerance. A batch copied to the
device through the trainer's loader must arrive bit-identical. Last, the device's training images/s at the
course's settings. Exit 0 when everything agrees; 2 when the device disagrees, naming what differs and the
setting that avoids it. On a machine without a GPU, `auto` is the CPU: the doctor says that it compared the CPU
with itself, which tells nothing about a GPU, rather than that the machine is ready for a night of training.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

import torch

from ..base.config import CHOICES, TrainConfig, check_setting
from ..base.errors import UserError
from ..base.mps_check import device_code

_logger = logging.getLogger(__name__)

# What "agrees" means. Losses: absolute difference / max(1, |loss|). Gradients and logits: relative L2 error
# (norm of the difference / norm of the CPU's). Weights: the difference of the updated weights relative to
# the update itself (AdamW's first steps move every weight by about lr, so this is the sensitive measure).
TOLERANCES = {"loss": 1e-3, "gradients": 1e-3, "weights": 2e-2, "amp logits": 5e-2}


class DeviceDisagrees(UserError):
    """The device computed something other than the CPU (exit code 2)."""


@dataclass
class Steps:
    """What a few training steps gave: the loss of each step, the last step's gradients, the final weights."""

    losses: list[float]
    gradients: torch.Tensor  # every parameter's gradient, flattened, on the CPU
    weights: torch.Tensor  # every parameter after the steps, flattened, on the CPU
    update: float  # the norm of (weights after - weights before)


def add_command(subparsers: argparse._SubParsersAction) -> None:
    """Add the `doctor` sub-command."""
    p = subparsers.add_parser("doctor", help="check that the device trains like the CPU; prints its speed")
    p.add_argument("--device", choices=CHOICES["device"], default="auto", help="the device to check against the CPU")
    p.add_argument("--backbone", default="efficientnet_b0", help="the model (random weights: no download)")
    p.add_argument("--image-size", type=int, default=224, help="the course's training resolution")
    p.add_argument("--batch-size", type=int, default=16, help="the course's batch size")
    p.add_argument("--steps", type=int, default=3, help="training steps compared")
    p.add_argument("--bench-steps", type=int, default=5, help="timed steps for images/s (0: no speed measurement)")
    p.add_argument("--data-dir", default=TrainConfig.data_dir, help="photos for the batch (food-101 layout)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> dict:
    result = run_doctor(device=args.device, backbone=args.backbone, image_size=args.image_size,
                        batch_size=args.batch_size, steps=args.steps, bench_steps=args.bench_steps,
                        data_dir=args.data_dir)
    print(format_table(result))
    if result["disagreements"]:
        raise DeviceDisagrees(" ".join(result["disagreements"]))
    return {k: v for k, v in result.items() if k != "rows"}


def run_doctor(*, device: str = "auto", backbone: str = "efficientnet_b0", image_size: int = 224, batch_size: int = 16,
               steps: int = 3, bench_steps: int = 5, data_dir: str = TrainConfig.data_dir) -> dict:
    """Compare the device with the CPU (see the module docstring).

    Returns:
        {"device", "rows": [{"check", "device", "cpu", "difference", "tolerance", "agrees"}], "images_per_s" (None
        with `bench_steps=0`),
        "disagreements": [sentences naming what differs and the setting that avoids it],
        "verdict": the last line of the table (`verdict`)}.

    Raises:
        UserError: settings the step cannot run with (`check_settings`), before any work.
    """
    from ..base.devices import amp_dtype, channels_last_for, device_description, get_device, seed_everything
    from ..data import loaders
    from ..training.models import create_model

    check_settings(image_size=image_size, batch_size=batch_size, steps=steps, bench_steps=bench_steps)
    dev = get_device(device)
    cfg = TrainConfig(data_dir=data_dir, image_size=image_size, augment="none")
    images, labels, class_names = loaders.sample_batch(cfg, batch_size, train=False)
    seed_everything(0)
    model = create_model(backbone, len(class_names), pretrained="none", image_size=image_size)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    channels_last = channels_last_for(dev)
    on_cpu = run_steps(model, start, images, labels, torch.device("cpu"), steps=steps, channels_last=True)
    on_dev = run_steps(model, start, images, labels, dev, steps=steps, channels_last=channels_last, side="device")
    rows = compare_steps(on_dev, on_cpu)
    disagreements = []
    if not all(r["agrees"] for r in rows):
        differ = ", ".join(r["check"] for r in rows if not r["agrees"])
        advice = "train with --device cpu and report the table (torch version, macOS, chip)"
        if channels_last:
            plain = run_steps(model, start, images, labels, dev, steps=steps, channels_last=False, side="device")
            if all(r["agrees"] for r in compare_steps(plain, on_cpu)):
                advice = "--no-channels-last avoids it (the same steps in the contiguous format agree)"
        disagreements.append(f"The device's training steps differ from the CPU's in: {differ}. {advice}.")
    dtype = amp_dtype(dev, True)
    if dtype is not None:
        amp_row = compare_amp(model, start, images, dev, dtype, channels_last)
        rows.append(amp_row)
        if not amp_row["agrees"]:
            disagreements.append(f"Mixed precision ({amp_row['device']}) on the device is off by "
                                 f"{amp_row['difference']}: --no-amp avoids it.")
    copy_row = check_copy(cfg, dev, batch_size)
    rows.append(copy_row)
    if not copy_row["agrees"]:
        disagreements.append("A batch copied to the device did not arrive intact (silent corruption of the "
                             "photos): --num-workers 0 avoids the loader's shared memory; report it with the table.")
    rate = None
    if bench_steps > 0:
        model.load_state_dict(start)
        rate = train_speed(model, dev, image_size=image_size, batch_size=batch_size, steps=bench_steps,
                           n_classes=len(class_names), channels_last=channels_last, dtype=dtype)
        rows.append({"check": f"training images/s ({backbone}, {image_size} px, batch {batch_size}, "
                              f"amp {'off' if dtype is None else str(dtype).replace('torch.', '')})",
                     "device": f"{rate:.1f}", "cpu": "", "difference": "", "tolerance": "", "agrees": True})
    return {"device": device_description(dev), "rows": rows, "images_per_s": rate, "disagreements": disagreements,
            "verdict": verdict(device, dev, disagreements, rate)}


def check_settings(*, image_size: int, batch_size: int, steps: int, bench_steps: int) -> None:
    """Refuse settings the doctor's training step cannot run with, before any work.

    Raises:
        UserError: naming the flag and what it needs. A training step of one image fails in BatchNorm
            whenever the last feature map is 1 x 1 (each channel then has a single value to normalise), so the
            batch holds at least 2 images, as `train`'s batches do.
    """
    for name, value in (("image_size", image_size), ("batch_size", batch_size), ("steps", steps)):
        check_setting(name, value)  # the ranges every command shares with `train`
    if batch_size < 2:
        raise UserError(f"--batch-size must be at least 2, got {batch_size}: a training step normalises each "
                        "BatchNorm channel over the batch, and one image of a small size leaves a single value to "
                        "normalise. Give --batch-size 2 or more (the course's is 16).")
    if bench_steps < 0:
        raise UserError(f"--bench-steps must be at least 0 (0: no speed measurement), got {bench_steps}.")


def verdict(asked: str, dev: torch.device, disagreements: list[str], rate: float | None) -> str:
    """The doctor's last line: what the comparison says, and what it cannot say (the CPU against itself)."""
    if disagreements:
        return " ".join(disagreements)
    if dev.type != "cpu":
        return "The device agrees with the CPU: ready for a night of training."
    speed = f" at {rate:.1f} images/s" if rate else ""
    if asked == "cpu":
        return (f"--device cpu: the CPU was compared with itself{speed}, which checks the trainer's step, not a GPU. "
                "Run the doctor without --device on the machine with the GPU (cuda or mps) before a night of "
                "training.")
    return (f"No GPU found (neither cuda nor mps is available): `auto` trains on the CPU here{speed}, and the "
            "CPU was compared with itself, which checks nothing about a GPU. A night of training needs a GPU: check "
            "the PyTorch install (torch.cuda.is_available(), torch.backends.mps.is_available()).")


@device_code
def run_steps(model: torch.nn.Module, start: dict, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
              *, steps: int, channels_last: bool, side: str = "cpu") -> Steps:
    """`steps` float32 training steps of the trainer's own step on `device`, from the weights `start`, each on
    the same batch (uint8 images as the loader gives them); `side` names the run for messages."""
    from ..data import augment
    from ..training import engine, recipe
    from ..training.metrics import Sums
    from ..training.models import data_config

    model.load_state_dict(start)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format).train()
    cfg = TrainConfig(lr=1e-3, warmup_epochs=0, label_smoothing=0.1, head_warmup_epochs=0)
    optimizer = recipe.make_optimizer(model, cfg, device)
    scheduler = recipe.make_scheduler(optimizer, kind="none", epochs=1, steps_per_epoch=steps, warmup_epochs=0,
                                      lr=cfg.lr, min_lr=cfg.lr, restart_epochs=0)
    d = data_config(model, images.shape[-1])
    run = engine.Run(model=model, raw_model=model, optimizer=optimizer, scheduler=scheduler,
                     criterion=recipe.make_criterion(False, cfg.label_smoothing), device=device, seed=0, accum_steps=1,
                     steps_per_epoch=steps, micro_per_epoch=steps,
                     memory_format=torch.channels_last if channels_last else torch.contiguous_format,
                     normalize=augment.DeviceNormalize(d["mean"], d["std"]), log_interval=10**9)
    before = torch.cat([p.detach().float().flatten().cpu() for p in model.parameters()])
    batch = (images, labels, torch.arange(len(labels)), torch.full((len(labels),), -1))
    batches = iter([batch] * steps)
    losses = []
    for step in range(steps):
        totals = engine.DeviceTotals(Sums(), device)
        engine.train_step(run, batches, 0, step, totals)
        n, loss_sum, _, _ = totals.state()
        losses.append(loss_sum / n)
    params = [p for p in model.parameters()]
    gradients = torch.cat([p.grad.detach().float().flatten().cpu() for p in params if p.grad is not None])
    weights = torch.cat([p.detach().float().flatten().cpu() for p in params])
    model.to("cpu", memory_format=torch.contiguous_format)
    return Steps(losses, gradients, weights, float((weights - before).norm()))


def compare_steps(dev: Steps, cpu: Steps) -> list[dict]:
    """Table rows: each step's loss, the last step's gradients, the updated weights."""
    rows = []
    for i, (a, b) in enumerate(zip(dev.losses, cpu.losses)):
        rows.append(_row(f"loss, step {i + 1}", f"{a:.6f}", f"{b:.6f}", abs(a - b) / max(1.0, abs(b)), "loss"))
    rows.append(_row("gradients (last step), rel. L2", f"norm {dev.gradients.norm():.5g}", f"norm {cpu.gradients.norm():.5g}",
                     _relative(dev.gradients, cpu.gradients), "gradients"))
    rows.append(_row("updated weights, vs. the update", f"norm {dev.weights.norm():.6g}", f"norm {cpu.weights.norm():.6g}",
                     _relative(dev.weights, cpu.weights, scale=cpu.update), "weights"))
    return rows


def _relative(a: torch.Tensor, b: torch.Tensor, scale: float | None = None) -> float:
    denominator = scale if scale else float(b.norm())
    return float((a - b).norm()) / max(denominator, 1e-12)


def _row(check: str, device: str, cpu: str, difference: float, kind: str) -> dict:
    tolerance = TOLERANCES[kind]
    return {"check": check, "device": device, "cpu": cpu, "difference": f"{difference:.2e}",
            "tolerance": f"{tolerance:.0e}", "agrees": difference <= tolerance}


@device_code
def compare_amp(model: torch.nn.Module, start: dict, images: torch.Tensor, device: torch.device, dtype: torch.dtype,
                channels_last: bool) -> dict:
    """One forward pass under the device's autocast against the CPU in float32: relative L2 of the logits."""
    from ..base.devices import autocast, to_model_input
    from ..data import augment
    from ..training.models import data_config

    d = data_config(model, images.shape[-1])
    normalize = augment.DeviceNormalize(d["mean"], d["std"])
    model.load_state_dict(start)
    model.eval()
    with torch.no_grad():
        reference = model(to_model_input(images, torch.device("cpu"), normalize, torch.contiguous_format))
        model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        with autocast(device, dtype):
            logits = model(to_model_input(images, device, normalize, fmt)).float().cpu()
    model.to("cpu", memory_format=torch.contiguous_format)
    name = str(dtype).replace("torch.", "")
    return _row(f"logits under autocast {name}, rel. L2", name, "float32", _relative(logits, reference), "amp logits")


@device_code
def check_copy(cfg: TrainConfig, device: torch.device, batch_size: int) -> dict:
    """Batches of real photos through the trainer's loader (pinned on CUDA) and copy (`utils.to_device`): each
    must arrive bit-identical, images and labels."""
    from ..base.devices import to_device
    from ..data import augment
    from ..data.loaders import ImageDataset, make_loader
    from ..data.splits import load_splits

    splits = load_splits(cfg.dataset, cfg.data_dir, seed=cfg.seed)
    transform = augment.eval_transform(cfg.image_size, (0.0,) * 3, (1.0,) * 3, uint8=True)
    loader = make_loader(ImageDataset(splits.train[: batch_size * 2], transform), batch_size=batch_size,
                         shuffle=False, seed=0, num_workers=0, pin_memory=device.type == "cuda")
    intact, total = 0, 0
    for images, labels, _, _ in loader:
        expected_images, expected_labels = images.clone(), labels.clone()
        arrived = to_device(images, device), to_device(labels, device)
        total += 1
        intact += torch.equal(arrived[0].cpu(), expected_images) and torch.equal(arrived[1].cpu(), expected_labels)
    return {"check": "batches copied to the device intact", "device": f"{intact}/{total}", "cpu": f"{total}/{total}",
            "difference": f"{total - intact}", "tolerance": "0", "agrees": intact == total}


def train_speed(model: torch.nn.Module, device: torch.device, *, image_size: int, batch_size: int, steps: int,
                n_classes: int, channels_last: bool, dtype: torch.dtype | None) -> float:
    """The trainer's step on a synthetic batch kept on the device (bench's ceiling): images/s."""
    from .bench import measure_ceiling

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=fmt)
    try:
        return measure_ceiling(model=model, device=device, dtype=dtype, memory_format=fmt, batch_size=batch_size,
                               image_size=image_size, n_classes=n_classes, steps=steps, warmup=1,
                               compile=False)["images_per_s"]
    finally:
        model.to("cpu", memory_format=torch.contiguous_format)


def format_table(result: dict) -> str:
    """The doctor's table (markdown), with a last line that says whether the device agrees."""
    lines = [f"doctor: {result['device']} against the CPU (tolerances: {TOLERANCES})", "",
             "| check | device | cpu | difference | tolerance | agrees |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['check']} | {r['device']} | {r['cpu']} | {r['difference']} | {r['tolerance']} | "
                     f"{'yes' if r['agrees'] else 'NO'} |")
    lines.append("")
    lines += result["disagreements"] or [result.get("verdict") or "The device agrees with the CPU."]
    return "\n".join(lines)


__all__ = ["TOLERANCES", "DeviceDisagrees", "add_command", "check_copy", "check_settings", "compare_steps",
           "format_table", "run_doctor", "run_steps", "verdict"]
