"""Photos to batches: the Dataset (decode, augment, skip unreadable photos), the seeded epoch sampler that makes
a resumed epoch draw the same batches, the DataLoader with its worker settings (macOS spawns workers; open-file
limits), and `sample_batch`, one batch as the trainer's loader gives it, for showing a technique on real photos."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence

import cv2
import numpy as np
import torch

from ..base.config import TrainConfig
from . import augment
from .images import BadImageError, read_image
from .splits import Sample, load_splits

_logger = logging.getLogger(__name__)



# ----------------------------------------------------------------------------------------------------------------
# Dataset and sampler


class ImageDataset(torch.utils.data.Dataset):
    """Images with labels, transformed by an albumentations pipeline.

    Items are requested as (index, sample_seed) by `EpochSampler`: the augmentation of a sample depends only on
    that seed, never on the worker or the batch it lands in, so a resumed or distributed run sees exactly the
    same augmented images as an uninterrupted single-process run.

    A file that cannot be decoded is replaced by the next readable sample (so a night's run never stops for one
    bad photo) and reported in the item's last field; with `strict=True` it raises instead.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable, *, strict: bool = False,
                 min_side: int | None = None):
        self.samples = list(samples)
        self.transform = transform
        self.strict = strict
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int, int]:
        index, seed = key if isinstance(key, tuple) else (key, index_seed(0, 0, key))
        for attempt in range(min(len(self.samples), 50)):
            i = (index + attempt) % len(self.samples)
            path, label = self.samples[i]
            try:
                image = read_image(path, self.min_side)
            except (BadImageError, OSError) as exc:
                if self.strict:
                    raise BadImageError(f"{exc} (run without --strict-data to skip unreadable images)") from exc
                _announce_skip(path, exc)
                continue
            self.transform.set_random_seed(seed)
            tensor = self.transform(image=image)["image"]
            return tensor, label, index, (index if attempt else -1)
        raise BadImageError(f"{self.samples[index][0]} and the 49 images after it are unreadable")


_announced: set[str] = set()


def _announce_skip(path: str, exc: BaseException) -> None:
    """Log why an image is skipped, once per file and process, at INFO: the callers list the skipped paths and
    warn once per discovery (a night with many bad photos must not fill the log with one warning each)."""
    if path not in _announced:
        _announced.add(path)
        _logger.info("Skipped an unreadable image: %s", exc)


def index_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 32-bit seed for one sample in one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class EpochSampler(torch.utils.data.Sampler):
    """Yields (index, sample_seed) pairs: a seeded permutation per epoch, sharded across ranks.

    Rank r of w takes positions r, r+w, r+2w, ... of the permutation, so with a per-rank batch of B/w the ranks
    together see exactly the global batches of a single process with batch B. `set_epoch(epoch, start)` skips
    the first `start` positions of the permutation, which is how a run resumes in the middle of an epoch.
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1):
        self.n, self.shuffle, self.seed, self.rank, self.world_size = n, shuffle, seed, rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _order(self) -> list[int]:
        if not self.shuffle:
            order = list(range(self.n))
        else:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=generator).tolist()
        if self.world_size > 1 and self.shuffle:  # pad so every rank takes the same number of training steps
            order += order[: (-len(order)) % self.world_size]
        return order[self.start:]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self._order()
        for index in order[self.rank:: self.world_size]:
            yield index, index_seed(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return len(self._order()[self.rank:: self.world_size])


def default_num_workers() -> int:
    return min(8, os.cpu_count() or 1)


def worker_init(worker_id: int) -> None:
    """Each spawned DataLoader worker (macOS): one OpenCV thread (the workers are the parallelism; OpenCV's own
    pool in every worker oversubscribes the cores). Top-level, so the spawned workers can pickle it. Forked
    workers (Linux) do not call it: OpenCV's pool copied by fork can hang in setNumThreads (seen in the test
    suite: a worker blocked there for 12 minutes)."""
    cv2.setNumThreads(1)


def _spawned_workers() -> bool:
    import multiprocessing

    return sys.platform == "darwin" or multiprocessing.get_start_method() != "fork"


MAC_EVAL_WORKERS = 2  # macOS: workers of a validation/test loader (spawned per pass, each a fresh Python + torch)


def make_loader(
    dataset: ImageDataset, *, batch_size: int, shuffle: bool, seed: int, num_workers: int = -1, rank: int = 0,
    world_size: int = 1, pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader over `dataset` driven by an `EpochSampler` (call `loader.sampler.set_epoch` each epoch).

    Workers stay alive between epochs (the sampler runs in the main process), and with `pin_memory` batches
    come in page-locked memory so host-to-device copies can be non-blocking. On macOS, where workers are
    spawned (each one a new interpreter importing torch, a few hundred MB), an evaluation loader (`shuffle=False`)
    gets at most `MAC_EVAL_WORKERS` workers and does not keep them between passes, so they do not sit idle
    beside the training loader's workers for the whole run.
    """

    workers = default_num_workers() if num_workers < 0 else num_workers
    persistent = True
    if sys.platform == "darwin" and not shuffle:
        workers, persistent = min(workers, MAC_EVAL_WORKERS), False
    workers = workers_for_open_files(workers)
    sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed, rank=rank, world_size=world_size)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
        persistent_workers=persistent and workers > 0, prefetch_factor=4 if workers > 0 else None, drop_last=False,
        worker_init_fn=worker_init if workers > 0 and _spawned_workers() else None,
    )


def sample_batch(cfg: TrainConfig, n: int = 8, *, train: bool = True,
                 one_per_class: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """One batch of `cfg`'s data as the trainer's loader gives it (its train or eval pipeline, before the
    on-device normalisation), for showing a technique on real photos.

    Args:
        train: the train split through the training pipeline (random augmentation); False: the test split through
            the evaluation pipeline (resize and centre crop only).
        one_per_class: the first photo of each of the first `n` classes, in class order (a batch of n classes).

    Returns:
        (uint8 images (n, 3, S, S), labels (n,), the dataset's class names)
    """
    splits = load_splits(cfg.dataset, cfg.data_dir, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                         seed=cfg.seed)
    if one_per_class:
        items = splits.train if train else splits.test
        first = {}
        for path, label in items:
            first.setdefault(label, (path, label))
        splits = dataclasses.replace(splits, **{"train" if train else "test": [first[k] for k in sorted(first)][:n]})
        train_shuffle = False
    else:
        train_shuffle = train
    size = cfg.image_size or 224
    unit = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # uint8 pipelines leave normalisation to the device
    transform = (augment.train_transform(cfg.augment, size, *unit, uint8=True) if train
                 else augment.eval_transform(size, *unit, uint8=True))
    loader = make_loader(ImageDataset(splits.train if train else splits.test, transform), batch_size=n,
                         shuffle=train_shuffle, seed=cfg.seed, num_workers=0)
    images, labels, _, _ = next(iter(loader))
    return images, labels, splits.class_names


# Open files. Each DataLoader worker holds its own libraries and pipes, and with torch's default
# `file_descriptor` sharing every batch in flight holds file descriptors in both processes. macOS shells start
# with `ulimit -n 256`, where a few workers end in "Too many open files".
FDS_BASE = 40  # the main process: libraries, the dataset's files, checkpoints

FDS_PER_WORKER = 24  # per worker: its pipes and batches in flight under file_descriptor sharing, train + val loaders

FDS_PER_WORKER_FILE_SYSTEM = 12  # the same under file_system sharing (shared memory by name)


_WARNED: set[tuple[int, int]] = set()


def raise_open_file_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit where the OS allows it (logged once).

    Returns:
        The soft limit now in force (a large number where the platform has no such limit).
    """
    try:
        import resource
    except ImportError:  # Windows
        return 1 << 20
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        for limit in (target, 10240):  # macOS refuses more than OPEN_MAX (10240) even with an unlimited hard limit
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, target), hard))
            except (ValueError, OSError):
                continue
            _logger.info("Raised the limit of open files from %d to %d (the hard limit)", soft, min(limit, target))
            soft = min(limit, target)
            break
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def workers_for_open_files(workers: int) -> int:
    """The number of DataLoader workers the open-file limit allows, after raising it (`raise_open_file_limit`).

    Where the limit is too low for `workers` under torch's `file_descriptor` sharing, switch to `file_system`
    sharing (which needs far fewer descriptors); where it is too low even for that, lower the workers. Both
    with a warning that names the limit and how to raise it.
    """
    if workers <= 0:
        return workers
    limit = raise_open_file_limit()
    mp = torch.multiprocessing
    if mp.get_sharing_strategy() == "file_descriptor" and limit < FDS_BASE + workers * FDS_PER_WORKER:
        if "file_system" in mp.get_all_sharing_strategies():
            mp.set_sharing_strategy("file_system")
            _logger.warning("The limit of open files is %d (ulimit -n), too low for %d loader workers sharing batches "
                            "by file descriptor: switched to torch's file_system sharing. Raise the limit (ulimit -n "
                            "4096, or the hard limit of your system) to avoid this.", limit, workers)
    per_worker = FDS_PER_WORKER if mp.get_sharing_strategy() == "file_descriptor" else FDS_PER_WORKER_FILE_SYSTEM
    allowed = max(0, (limit - FDS_BASE) // per_worker)
    if allowed < workers and (limit, workers) not in _WARNED:  # once, not for each loader
        _WARNED.add((limit, workers))
        _logger.warning("The limit of open files is %d (ulimit -n), too low for %d loader workers: using %d. Raise "
                        "the limit (ulimit -n 4096) to use more.", limit, workers, allowed)
    return min(workers, allowed)
