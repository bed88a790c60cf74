"""`python -m helpers bench`: training throughput measured against the hardware's own ceiling.

    python -m helpers bench --backbone efficientnet_b0 --image-size 224 --batch-size 64 --device cuda \\
        --data-dir data/food-101 --workers 0 4 8 16 --baseline
    python -m helpers bench --sections input --data-dir data/food-101-mini \\
        --extra-data-dir data/food-101-mini-256-prepared --workers 0 1 2 --baseline

It prints one table (also returned as a dict, and printed as a JSON line by the CLI):

1. ceiling: the trainer's own step (`engine.train_one_epoch`) fed synthetic tensors already on the device, so
   nothing but the model, the optimizer and the step's bookkeeping is timed;
2. input pipeline alone: images/s of the training DataLoader for each worker count, for the package's path
   (OpenCV decode + albumentations, `data.ImageDataset`) and, with `--baseline`, for a plain PIL + torchvision
   pipeline doing the same augmentations (the reference to beat, nothing else uses it); on CUDA also nvJPEG
   decoding with crop/flip/normalise on the device;
3. the real trainer end to end on real photos (the same step, fed by the real DataLoader), its ratio to (1),
   and peak memory: the train step's peak from `batch_size.step_peak_bytes` (CUDA allocator peak, sampled MPS
   driver memory, or a CPU tensor-bytes estimate) and the counter the trainer logs per epoch.

Rates exclude start-up: the first batches of every measurement (worker start, cudnn autotuning, torch.compile)
are not timed. On a machine shared with other jobs, run with `--repeats 3` (the best repeat is kept).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import logging
import math
import os
import random
import resource
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from ..base.errors import UserError
from ..base.mps_check import device_code

_logger = logging.getLogger(__name__)

SECTIONS = ("ceiling", "input", "trainer")


def add_command(subparsers: argparse._SubParsersAction) -> None:
    """Add the `bench` sub-command."""
    from ..base import config as config_module

    p = subparsers.add_parser("bench", help="throughput table: device ceiling, input pipeline, trainer end to end",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backbone", default="efficientnet_b0", help="any timm model name")
    p.add_argument("--image-size", type=int, default=224, help="training resolution in pixels")
    p.add_argument("--batch-size", default="32", help="micro-batch, or auto (the largest that fits the device)")
    p.add_argument("--device", choices=config_module.CHOICES["device"], default="auto")
    p.add_argument("--dataset", choices=config_module.CHOICES["dataset"], default="food-101")
    p.add_argument("--data-dir", default="data/food-101-tiny", help="real photos for sections 2 and 3")
    p.add_argument("--extra-data-dir", nargs="*", default=[], metavar="DIR",
                   help="more copies of the dataset to measure in section 2, e.g. one made by `prepare`")
    p.add_argument("--augment", choices=config_module.CHOICES["augment"], default="basic",
                   help="training augmentation preset (the baseline supports none, light and basic)")
    p.add_argument("--workers", type=int, nargs="+", default=None,
                   help="DataLoader worker counts for section 2 (default 0, 1, 2, 4, ... up to the CPU count)")
    p.add_argument("--trainer-workers", type=int, default=-1, help="workers for section 3 (-1: the trainer's default)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps in sections 1 and 3")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (more with --compile)")
    p.add_argument("--images", type=int, default=640, help="images timed per input-pipeline measurement")
    p.add_argument("--repeats", type=int, default=1, help="repeat each input measurement, keep the best")
    p.add_argument("--baseline", action="store_true", help="also measure a plain PIL + torchvision pipeline")
    p.add_argument("--device-decode", action=argparse.BooleanOptionalAction, default=None,
                   help="also measure decoding with torchvision.io on the device (nvJPEG; default: on for CUDA)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="mixed precision")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default: the trainer's: on, except on MPS)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--markdown", help="also write the table to this file")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> dict:
    batch: int | str = args.batch_size
    if str(batch).lower() != "auto":
        try:
            batch = int(batch)
        except ValueError:
            raise UserError(f"--batch-size must be a positive integer or auto, got {batch!r}.") from None
    else:
        batch = "auto"
    result = run_bench(
        backbone=args.backbone, image_size=args.image_size, batch_size=batch, device=args.device,
        dataset=args.dataset, data_dir=args.data_dir, extra_data_dirs=args.extra_data_dir, augment=args.augment,
        workers=args.workers, trainer_workers=args.trainer_workers, steps=args.steps, warmup=args.warmup,
        images=args.images, repeats=args.repeats, baseline=args.baseline, device_decode=args.device_decode,
        amp=args.amp, channels_last=args.channels_last, compile=args.compile, sections=args.sections)
    table = format_table(result)
    print(table)
    if args.markdown:
        from ..base.io import atomic_write_text

        atomic_write_text(args.markdown, table + "\n")
    return result


def run_bench(*, backbone: str = "efficientnet_b0", image_size: int = 224, batch_size: int | str = 32,
              device: str = "auto", dataset: str = "food-101", data_dir: str = "data/food-101-tiny",
              extra_data_dirs: Sequence[str] = (), augment: str = "basic", workers: Sequence[int] | None = None,
              trainer_workers: int = -1, steps: int = 10, warmup: int = 2, images: int = 640, repeats: int = 1,
              baseline: bool = False, device_decode: bool | None = None, amp: bool = True,
              channels_last: bool | None = None, compile: bool = False, sections: Sequence[str] = SECTIONS) -> dict:
    """Measure the sections of the table (see the module docstring) and return them as plain data.

    Returns:
        {"settings": {...}, "ceiling": {"images_per_s", "peak_mb", ...}, "input": [{"pipeline", "data_dir",
        "workers", "images_per_s", "vs_baseline"}, ...], "trainer": {"images_per_s", "workers", "peak_mb",
        "vs_ceiling"}}; sections that were not asked for are absent.
    """
    from ..base.devices import amp_dtype, channels_last_for, compile_for, get_device
    from ..data import augment as augment_module
    from ..data.splits import load_splits
    from ..training.models import create_model, data_config

    _check_settings(image_size, batch_size, steps, warmup, images, repeats, workers, sections)
    if baseline and "input" in sections:
        baseline_transform(augment, image_size, (0.5,) * 3, (0.5,) * 3)  # an unsupported preset fails before any work
    dev = get_device(device)
    if device_decode and dev.type == "mps":
        raise UserError("--device-decode measures torchvision's GPU JPEG decoding (nvJPEG), which exists on CUDA only; "
                        "on MPS the photos are decoded on the CPU, which section 2 already measures. Drop the flag.")
    dtype = amp_dtype(dev, amp)
    channels_last = channels_last_for(dev, channels_last)
    compile = compile_for(dev, compile)
    workers = list(workers) if workers is not None else _default_workers()
    needs_data = "input" in sections or "trainer" in sections
    splits = load_splits(dataset, data_dir) if needs_data else None
    n_classes = len(splits.class_names) if splits else 101
    model = create_model(backbone, n_classes, pretrained="none")
    dcfg = data_config(model, image_size)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(dev, memory_format=memory_format)
    if batch_size == "auto":
        from ..training.batch_size import find_batch_size

        batch_size = find_batch_size(model, image_size, dev, channels_last=channels_last, amp_dtype=dtype)
    settings = {"backbone": backbone, "image_size": image_size, "batch_size": batch_size, "device": str(dev),
                "device_name": _device_name(dev), "amp": str(dtype).replace("torch.", "") if dtype else "off",
                "channels_last": channels_last, "compile": compile, "augment": augment,
                "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    result: dict = {"settings": settings}
    step_args = dict(model=model, device=dev, dtype=dtype, memory_format=memory_format, batch_size=batch_size,
                     steps=steps, warmup=warmup + (3 if compile else 0), compile=compile)
    if "ceiling" in sections:
        result["ceiling"] = measure_ceiling(**step_args, image_size=image_size, n_classes=n_classes)
    if "input" in sections:
        result["input"] = measure_input(
            splits.train, dataset=dataset, data_dirs=[data_dir, *extra_data_dirs], augment=augment,
            size=image_size, mean=dcfg["mean"], std=dcfg["std"], batch_size=batch_size, workers=workers,
            images=images, repeats=repeats, baseline=baseline, device=dev)
        if device_decode or (device_decode is None and dev.type == "cuda"):
            result["input"].append(measure_device_decode(
                splits.train, data_dir=data_dir, size=image_size, mean=dcfg["mean"], std=dcfg["std"], device=dev,
                batch_size=batch_size, images=images, repeats=repeats))
    if "trainer" in sections:
        transform = augment_module.train_transform(augment, image_size, dcfg["mean"], dcfg["std"], uint8=True)
        result["trainer"] = measure_trainer(**step_args, samples=splits.train, transform=transform,
                                            normalize=augment_module.DeviceNormalize(dcfg["mean"], dcfg["std"]),
                                            num_workers=trainer_workers)
        if "ceiling" in result:
            result["trainer"]["vs_ceiling"] = result["trainer"]["images_per_s"] / result["ceiling"]["images_per_s"]
    return result


def _check_settings(image_size, batch_size, steps, warmup, images, repeats, workers, sections) -> None:
    if image_size < 32:
        raise UserError(f"--image-size must be at least 32 pixels, got {image_size}.")
    if batch_size != "auto" and (not isinstance(batch_size, int) or batch_size <= 0):
        raise UserError(f"--batch-size must be a positive integer or auto, got {batch_size!r}.")
    if steps <= 0 or warmup < 0 or images <= 0 or repeats <= 0:
        raise UserError("--steps, --images and --repeats must be positive and --warmup at least 0.")
    if workers is not None and any(w < 0 for w in workers):
        raise UserError(f"--workers takes counts of 0 or more, got {list(workers)}.")
    unknown = set(sections) - set(SECTIONS)
    if unknown or not sections:
        raise UserError(f"--sections takes some of {', '.join(SECTIONS)}, got {list(sections)}.")


def _default_workers() -> list[int]:
    cpus = os.cpu_count() or 1
    counts = [0, 1] + [2**k for k in range(1, 8) if 2**k <= cpus]
    return sorted(set(counts + [cpus]))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        from ..base.devices import apple_machine

        mac = apple_machine()
        return f"{mac['chip']} GPU (MPS), macOS {mac['macos']}" if mac else "Apple GPU (MPS)"
    import platform

    return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------------------------------------------
# Sections 1 and 3: the trainer's step, fed synthetic device tensors or the real DataLoader


@device_code
def measure_ceiling(*, model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None,
                    memory_format: torch.memory_format, batch_size: int, image_size: int, n_classes: int,
                    steps: int, warmup: int, compile: bool) -> dict:
    """Section 1: images/s of `engine.train_one_epoch` on one synthetic batch kept on the device.

    Returns:
        {"images_per_s", "peak_mb" (train-step peak, see batch_size.step_peak_bytes), "step_ms"}.
    """
    from ..training.batch_size import step_peak_bytes

    images = torch.randn(batch_size, 3, image_size, image_size, device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, n_classes, (batch_size,), device=device)
    batch = (images, labels, torch.arange(batch_size), torch.full((batch_size,), -1))
    synthetic = [batch] * (warmup + steps)
    rate = _timed_steps(model, synthetic, device=device, dtype=dtype, memory_format=memory_format, steps=steps,
                        warmup=warmup, compile=compile)
    peak = step_peak_bytes(model, batch_size, image_size, device, channels_last=memory_format == torch.channels_last,
                           amp_dtype=dtype)
    return {"images_per_s": rate, "step_ms": 1000 * batch_size / rate, "peak_mb": (peak or 0) / 2**20}


@device_code
def measure_trainer(*, model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None,
                    memory_format: torch.memory_format, batch_size: int, samples: Sequence, transform: Callable,
                    num_workers: int, steps: int, warmup: int, compile: bool,
                    normalize: Callable | None = None) -> dict:
    """Section 3: images/s of `engine.train_one_epoch` fed by the trainer's DataLoader on real photos.

    Returns:
        {"images_per_s", "workers", "peak_mb": the counter the trainer logs per epoch (CUDA peak allocated, MPS
        driver memory) or, on CPU, the process's peak resident memory}.
    """
    from ..base.devices import peak_memory_mb, reset_peak_memory
    from ..data.loaders import ImageDataset, default_num_workers, make_loader

    workers = default_num_workers() if num_workers < 0 else num_workers
    dataset = ImageDataset(_repeat(samples, (steps + warmup) * batch_size), transform)
    loader = make_loader(dataset, batch_size=batch_size, shuffle=True, seed=0, num_workers=workers,
                         pin_memory=device.type == "cuda")
    reset_peak_memory(device)
    rate = _timed_steps(model, loader, device=device, dtype=dtype, memory_format=memory_format, steps=steps,
                        warmup=warmup, compile=compile, normalize=normalize)
    peak = peak_memory_mb(device) if device.type != "cpu" else _peak_rss_mb()
    del loader
    gc.collect()
    return {"images_per_s": rate, "workers": workers, "peak_mb": peak,
            "peak_kind": "process peak RSS" if device.type == "cpu" else "trainer counter"}


def _timed_steps(model: torch.nn.Module, batches, *, device: torch.device, dtype: torch.dtype | None,
                 memory_format: torch.memory_format, steps: int, warmup: int, compile: bool,
                 normalize: Callable | None = None) -> float:
    """Run `warmup + steps` steps of the real train step and return images/s over the last `steps`."""
    from ..base.config import TrainConfig
    from ..training import engine, recipe

    saved = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    defaults = TrainConfig()  # the trainer's default optimizer (AdamW, fused on CUDA only) and learning rates
    optimizer = recipe.make_optimizer(model, defaults, device)
    scheduler = recipe.make_scheduler(optimizer, kind="none", epochs=1, steps_per_epoch=steps + warmup,
                                      warmup_epochs=0, lr=defaults.lr, min_lr=defaults.lr, restart_epochs=0)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    run = engine.Run(model=torch.compile(model) if compile else model, raw_model=model, optimizer=optimizer,
                     scheduler=scheduler, criterion=recipe.make_criterion(False, 0.1), device=device, seed=0,
                     accum_steps=1, steps_per_epoch=warmup + steps, micro_per_epoch=warmup + steps,
                     memory_format=memory_format, amp=dtype, scaler=scaler, log_interval=10**9, normalize=normalize)
    clock = _Clock(batches, mark=warmup)
    try:
        result = engine.train_one_epoch(run, clock, 0)
        _synchronize(device)
    finally:
        model.load_state_dict(saved)  # the bench leaves the weights as they were for the next section
    if clock.marked is None:  # no warm-up: the step's own timer covers every step
        return result["images_per_s"]
    return steps * _batch_len(clock.last_batch) / (time.perf_counter() - clock.marked)


class _Clock:
    """Iterates `batches` and notes the time at which batch number `mark` is requested (the end of warm-up)."""

    def __init__(self, batches, mark: int):
        self.batches, self.mark = batches, mark
        self.marked: float | None = None
        self.last_batch = None

    def __iter__(self) -> Iterator:
        iterator = iter(self.batches)
        for i in itertools.count():
            if i == self.mark and self.mark > 0:
                self.marked = time.perf_counter()
            try:
                self.last_batch = next(iterator)
            except StopIteration:
                return
            yield self.last_batch


def _batch_len(batch) -> int:
    return len(batch[1])


def _synchronize(device: torch.device) -> None:
    from ..base.devices import synchronize

    synchronize(device)


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def _repeat(samples: Sequence, n: int) -> list:
    """`samples` repeated (whole) until there are at least `n`, so a measurement never waits on an epoch end."""
    if not samples:
        raise UserError("The dataset's train split is empty: point --data-dir at a dataset with training images.")
    return list(samples) * max(1, math.ceil(n / len(samples)))


# ----------------------------------------------------------------------------------------------------------------
# Section 2: the input pipeline alone


def measure_input(samples: Sequence, *, dataset: str, data_dirs: Sequence[str], augment: str, size: int,
                  mean: Sequence[float], std: Sequence[float], batch_size: int, workers: Sequence[int], images: int,
                  repeats: int, baseline: bool, device: torch.device) -> list[dict]:
    """Section 2: images/s of the training DataLoader alone, per data folder, pipeline and worker count.

    Every pipeline reads the same images in the same order through the trainer's `make_loader` (same sampler,
    batch size, pinning, persistent workers, prefetching); only decoding and augmentation differ. Each delivers
    normalised float batches on `device`, as the train step needs them: the package's workers send uint8 batches
    that `augment.DeviceNormalize` turns into model input on the device (timed here, as the trainer does it),
    the baseline's send normalised float batches (torchvision's ToTensor + Normalize). Measurements
    are interleaved (package, baseline, next folder, ...) and the whole table is measured `repeats` times, keeping
    each cell's best, so a busy machine slows them alike.

    Args:
        samples: the train split of the first folder; the same ids are looked up in the other folders.
        data_dirs: the original dataset first, then copies of it (e.g. from `prepare`).

    Returns:
        One row per measurement: {"pipeline", "data_dir", "workers", "images_per_s", "cpu_ms_per_image" (0 workers
        only, else None), "vs_baseline"}, where vs_baseline compares images/s with the baseline on the first folder
        at the same worker count.
    """
    from ..data import augment as augment_module
    from ..data.loaders import ImageDataset
    from ..data.splits import load_splits

    package_tf = augment_module.train_transform(augment, size, tuple(mean), tuple(std), uint8=True)
    normalize = augment_module.DeviceNormalize(tuple(mean), tuple(std))
    baseline_tf = baseline_transform(augment, size, mean, std) if baseline else None
    n = images + 2 * batch_size  # the first batch is not timed
    per_dir = {data_dirs[0]: _repeat(samples, n)}
    for extra in data_dirs[1:]:
        per_dir[extra] = _same_ids(per_dir[data_dirs[0]], data_dirs[0], load_splits(dataset, extra).train, extra)
    rows: dict[tuple[int, str, str], dict] = {}
    for _ in range(repeats):  # whole passes over the table, so each cell's best comes from a different moment
        for w in workers:
            for folder, folder_samples in per_dir.items():
                pipelines = [("package: OpenCV + albumentations", ImageDataset(folder_samples, package_tf), normalize)]
                if baseline_tf is not None:  # torchvision's pipeline normalises in the worker
                    pipelines.append(("baseline: PIL + torchvision", BaselineDataset(folder_samples, baseline_tf), None))
                for name, ds, to_input in pipelines:
                    rate, cpu_ms = _loader_rate(ds, batch_size=batch_size, workers=w, images=images, device=device,
                                                normalize=to_input)
                    _logger.info("input %-34s %-40s %d workers: %.0f images/s", name, folder, w, rate)
                    row = rows.setdefault((w, str(folder), name), {"pipeline": name, "data_dir": str(folder),
                                                                   "workers": w, "images_per_s": 0.0,
                                                                   "cpu_ms_per_image": None})
                    row["images_per_s"] = max(row["images_per_s"], rate)
                    if cpu_ms is not None:
                        row["cpu_ms_per_image"] = min(row["cpu_ms_per_image"] or cpu_ms, cpu_ms)
    rows = list(rows.values())
    reference = {r["workers"]: r["images_per_s"] for r in rows
                 if r["pipeline"].startswith("baseline") and r["data_dir"] == str(data_dirs[0])}
    for r in rows:
        r["vs_baseline"] = r["images_per_s"] / reference[r["workers"]] if r["workers"] in reference else None
    return rows


def _same_ids(samples: Sequence, root: str, other: Sequence, other_root: str) -> list:
    """`samples` (paths under `root`) mapped to the same files under `other_root`, checked against its split."""
    available = {str(Path(p).resolve()) for p, _ in other}
    base, new_base = Path(root).expanduser().resolve(), Path(other_root).expanduser().resolve()
    mapped = []
    for path, label in samples:
        new = str(new_base / Path(path).resolve().relative_to(base))
        if new not in available:
            raise UserError(f"{other_root} lacks {new}: give copies of --data-dir with the same images "
                            "(e.g. made by `python -m helpers prepare`).")
        mapped.append((new, label))
    return mapped


@device_code
def _loader_rate(dataset, *, batch_size: int, workers: int, images: int, device: torch.device,
                 normalize: Callable | None = None) -> tuple[float, float | None]:
    """Images/s of `images` images through the trainer's `make_loader` onto `device` (then `normalize`d), the first
    batch untimed, and with 0 workers the CPU milliseconds per image (which other jobs on the machine do not change,
    unlike images/s).

    With 0 workers the pipeline runs in this process with one torch thread, as it does in a worker: with the
    default of one thread per core, the intra-op pool of a busy machine can make small tensor ops (ToTensor,
    collate) ten times slower, which would measure the thread pool rather than the pipeline.
    """
    from ..base.devices import to_model_input
    from ..data.loaders import make_loader

    loader = make_loader(dataset, batch_size=batch_size, shuffle=True, seed=0, num_workers=workers,
                         pin_memory=device.type == "cuda")
    threads = torch.get_num_threads()
    if workers == 0:  # in-process, with one torch thread as in a DataLoader worker: the cost of one process
        torch.set_num_threads(1)
    try:
        batches = iter(loader)
        next(batches)  # worker start-up and the pipeline's first fill are not timed
        count, started, cpu_started = 0, time.perf_counter(), time.process_time()
        while count < images:
            count += len(to_model_input(next(batches)[0], device, normalize, torch.contiguous_format))
        _synchronize(device)
        cpu_ms = 1000 * (time.process_time() - cpu_started) / count if workers == 0 else None
        return count / (time.perf_counter() - started), cpu_ms
    finally:
        torch.set_num_threads(threads)
        del loader
        gc.collect()


class BaselineDataset(torch.utils.data.Dataset):
    """BASELINE for comparison only: a plain torchvision dataset (PIL decode at full size + torchvision transforms).

    Items come as the package's `ImageDataset` items do, (tensor, label, index, -1), requested with the same
    (index, seed) keys, so the two run through the same DataLoader; each item reseeds torch's generator, which
    torchvision's random transforms draw from.
    """

    def __init__(self, samples: Sequence, transform: Callable):
        self.samples, self.transform = list(samples), transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int, int]:
        from PIL import Image

        index, seed = key if isinstance(key, tuple) else (key, key)
        path, label = self.samples[index]
        torch.manual_seed(seed)
        random.seed(seed)
        with Image.open(path) as im:
            image = im.convert("RGB")  # what torchvision's default_loader does
        return self.transform(image), label, index, -1


def baseline_transform(preset: str, size: int, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """BASELINE for comparison only: torchvision (PIL) transforms matching `augment.train_transform(preset)`.

    light: RandomResizedCrop (scale 0.5-1, bicubic) and flip. basic: RandomResizedCrop (0.25-1), flip,
    ColorJitter (0.2, 0.2, 0.2, 0.05) half the time, RandomAffine (translate 6.25%, scale 0.9-1.1, rotate 15 degrees)
    half the time, then one erased rectangle of 0.25-2.25% of the image 30% of the time (CoarseDropout makes 1-4
    holes). none: resize and centre crop. All end in ToTensor + Normalize.

    Raises:
        UserError: "advanced", which has no plain torchvision equivalent (GaussNoise, RandomGamma, ...).
    """
    import torchvision.transforms as T

    bicubic = T.InterpolationMode.BICUBIC
    finish = [T.ToTensor(), T.Normalize(mean, std)]
    if preset == "none":
        return T.Compose([T.Resize(int(size / 0.875), interpolation=bicubic), T.CenterCrop(size), *finish])
    if preset == "light":
        return T.Compose([T.RandomResizedCrop(size, scale=(0.5, 1.0), interpolation=bicubic),
                          T.RandomHorizontalFlip(), *finish])
    if preset == "basic":
        return T.Compose([
            T.RandomResizedCrop(size, scale=(0.25, 1.0), interpolation=bicubic),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05)], p=0.5),
            T.RandomApply([T.RandomAffine(degrees=15, translate=(0.0625, 0.0625), scale=(0.9, 1.1))], p=0.5),
            *finish,
            T.RandomErasing(p=0.3, scale=(0.0025, 0.0225), value=0),
        ])
    raise UserError(f"The torchvision baseline has no equivalent of --augment {preset}: use none, light or basic.")


@device_code
def measure_device_decode(samples: Sequence, *, data_dir: str, size: int, mean: Sequence[float],
                          std: Sequence[float], device: torch.device, batch_size: int, images: int,
                          repeats: int) -> dict:
    """Section 2, CUDA: decode JPEG batches on the device (nvJPEG via torchvision.io.decode_jpeg) and crop,
    flip and normalise them there, in the main process (on CPU the same code decodes with libjpeg).

    Only RandomResizedCrop, flip and normalisation run on the device, so this is the light preset's cost.

    Returns:
        A section-2 row: {"pipeline", "data_dir", "workers": 0, "images_per_s", "vs_baseline": None}.
    """
    from torchvision.io import ImageReadMode, decode_jpeg, read_file
    from torchvision.transforms import RandomResizedCrop
    from torchvision.transforms.v2 import functional as TF

    paths = [p for p, _ in _repeat(samples, images + batch_size)]
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
    generator = torch.Generator().manual_seed(0)

    def one_batch(batch_paths: list[str]) -> torch.Tensor:
        data = [read_file(p) for p in batch_paths]
        decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        crops = []
        for image in decoded:
            top, left, h, w = RandomResizedCrop.get_params(image, scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3))
            crop = TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)
            crops.append(crop.flip(-1) if torch.rand(1, generator=generator).item() < 0.5 else crop)
        batch = torch.stack(crops).float().sub_(mean_t).div_(std_t)
        return batch.contiguous(memory_format=torch.channels_last)

    best = 0.0
    for _ in range(repeats):
        one_batch(paths[:batch_size])  # warm-up: nvJPEG handles, kernels
        _synchronize(device)
        count, started = 0, time.perf_counter()
        while count < images:
            count += len(one_batch(paths[batch_size + count: 2 * batch_size + count]))
        _synchronize(device)
        best = max(best, count / (time.perf_counter() - started))
    name = f"device decode ({'nvJPEG' if device.type == 'cuda' else 'torchvision.io'}) + crop/flip on {device.type}"
    return {"pipeline": name, "data_dir": str(data_dir), "workers": 0, "images_per_s": best, "cpu_ms_per_image": None,
            "vs_baseline": None}


# ----------------------------------------------------------------------------------------------------------------
# The table


def format_table(result: dict) -> str:
    """The bench result as a Markdown table (what the README shows)."""
    s = result["settings"]
    lines = [f"bench: {s['backbone']} at {s['image_size']} px, batch {s['batch_size']}, {s['device']} "
             f"({s['device_name']}), amp {s['amp']}, channels_last {s['channels_last']}, compile {s['compile']}, "
             f"augment {s['augment']}, {s['cpu_count']} CPUs, torch {s['torch']}", "",
             "| section | pipeline | data | workers | images/s | ratio | CPU ms/image | peak memory |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    ceiling = result.get("ceiling")
    if ceiling:
        lines.append(f"| 1. ceiling | train step on synthetic tensors on {s['device']} | - | - | "
                     f"{ceiling['images_per_s']:,.1f} | 1.00 | - | {ceiling['peak_mb']:,.0f} MB (train step) |")
    for row in result.get("input", []):
        ratio = f"{row['vs_baseline']:.2f}x baseline" if row.get("vs_baseline") else "-"
        cpu = f"{row['cpu_ms_per_image']:.2f}" if row.get("cpu_ms_per_image") else "-"
        lines.append(f"| 2. input | {row['pipeline']} | {_short(row['data_dir'])} | {row['workers']} | "
                     f"{row['images_per_s']:,.0f} | {ratio} | {cpu} | - |")
    trainer = result.get("trainer")
    if trainer:
        ratio = f"{trainer['vs_ceiling']:.2f} of ceiling" if trainer.get("vs_ceiling") else "-"
        lines.append(f"| 3. trainer | end to end on real photos ({s['augment']}) | - | {trainer['workers']} | "
                     f"{trainer['images_per_s']:,.1f} | {ratio} | - | {trainer['peak_mb']:,.0f} MB "
                     f"({trainer['peak_kind']}) |")
    return "\n".join(lines)


def _short(path: str) -> str:
    parts = Path(path).parts
    return "/".join(parts[-2:]) if len(parts) > 2 else path
