"""Cached features: the pooled pre-logit features of a frozen backbone for every photo of a dataset, once.

    python -m helpers features --dataset food-101 --data-dir data/food-101 \\
        --backbone vit_large_patch14_clip_quickgelu_336.openai --pretrained hub --views 2 --output-dir features/clip-l

A linear probe (`helpers.probe`) then trains on these in seconds. The backbone runs with `num_classes=0` on its
own evaluation preprocessing (timm's data config: input size, crop fraction, interpolation, mean and std, via
`helpers.models.data_config` and `helpers.augment.eval_transform`, the recipe `evaluate` uses), on the same seeded
train/val split as `train`. `--views 2` averages each photo's features with those of its mirror image.

The output folder holds `features.json` (the settings) and `{train,val,test}.safetensors`, each with
`features` (N, D) float16, `labels` (N,) int64 and a JSON metadata entry with the image paths and class names.
The work is written in chunks (`.chunks/<split>-<k>.safetensors`, each atomically); a run killed at any moment
and started again with the same command skips the finished chunks and ends with the same bytes as an
uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from tqdm.auto import tqdm

from .config import CHOICES, UserError

_logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MANIFEST = "features.json"
VERSION = 1


def add_command(subparsers: argparse._SubParsersAction) -> None:
    """Add the `features` sub-command."""
    p = subparsers.add_parser("features", help="cache a frozen backbone's pooled features of every split")
    p.add_argument("--dataset", choices=CHOICES["dataset"], default="food-101")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--backbone", required=True, help="a timm model name, optionally with its tag (vit_x.openai)")
    p.add_argument("--pretrained", default="hub", help="hub | offline | a weights file of the backbone")
    p.add_argument("--image-size", type=int, help="input size (default: the backbone's pretrained size)")
    p.add_argument("--views", type=int, choices=(1, 2), default=1, help="2: average with the mirrored image")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--chunk-size", type=int, default=2048, help="images per saved chunk (the work a kill can lose)")
    p.add_argument("--num-workers", type=int, default=-1)
    p.add_argument("--device", choices=CHOICES["device"], default="auto")
    p.add_argument("--val-fraction", type=float, default=0.1, help="as `train`: the same seeded val split")
    p.add_argument("--test-fraction", type=float, default=0.2, help="imagefolder without test/: as `train`")
    p.add_argument("--seed", type=int, default=42, help="as `train`: seeds the val split")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> dict:
    return extract_features(
        dataset=args.dataset, data_dir=args.data_dir, backbone=args.backbone, pretrained=args.pretrained,
        image_size=args.image_size, views=args.views, output_dir=args.output_dir, batch_size=args.batch_size,
        chunk_size=args.chunk_size, num_workers=args.num_workers, device=args.device, val_fraction=args.val_fraction,
        test_fraction=args.test_fraction, seed=args.seed)


def feature_model(backbone: str, pretrained: str, image_size: int | None = None) -> tuple[torch.nn.Module, dict]:
    """The backbone without its classifier (`num_classes=0`: the model returns pooled pre-logit features) and
    its evaluation data config (image_size, mean, std, crop_pct, interpolation)."""
    from .models import create_model, data_config

    model = create_model(backbone, 0, pretrained=pretrained, image_size=image_size)
    return model.eval(), data_config(model, image_size)


@torch.no_grad()
def embed(model: torch.nn.Module, images: torch.Tensor, views: int = 1) -> torch.Tensor:
    """Pooled features (N, D) float32 of a normalised batch (N, 3, H, W); `views=2` averages them with those of
    the mirrored batch."""
    feats = model(images).float()
    if views == 2:
        feats = (feats + model(torch.flip(images, dims=[3])).float()) / 2
    return feats


def extract_features(*, dataset: str, data_dir: str, backbone: str, pretrained: str = "hub",
                     image_size: int | None = None, views: int = 1, output_dir: str | Path, batch_size: int = 64,
                     chunk_size: int = 2048, num_workers: int = -1, device: str = "auto", val_fraction: float = 0.1,
                     test_fraction: float = 0.2, seed: int = 42) -> dict:
    """Compute and save the features of the train, val and test splits (see the module docstring).

    Returns:
        {"output_dir", "backbone", "num_features", "images": computed now, "seconds", "images_per_s"}
    """
    from .data import load_splits
    from .utils import amp_dtype, get_device

    if views not in (1, 2) or batch_size < 1 or chunk_size < 1:
        raise UserError(f"--views takes 1 or 2 (got {views}); --batch-size and --chunk-size must be positive.")
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output-dir {out} is a file. Give a folder (it is created when missing).")
    splits = load_splits(dataset, data_dir, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    dev = get_device(device)
    model, dcfg = feature_model(backbone, pretrained, image_size)
    manifest = {"version": VERSION, "backbone": backbone, "pretrained": pretrained, "views": views,
                "data_config": {**dcfg, "mean": list(dcfg["mean"]), "std": list(dcfg["std"])},
                "num_features": int(model.num_features), "dataset": dataset,
                "data_dir": str(Path(data_dir).expanduser().resolve()), "val_fraction": val_fraction,
                "test_fraction": test_fraction, "seed": seed, "class_names": splits.class_names,
                "sizes": {s: len(splits.get(s)) for s in SPLITS}, "chunk_size": chunk_size}
    _check_or_write_manifest(out, manifest)
    model.to(dev)
    dtype = amp_dtype(dev, True)
    done, started = 0, time.perf_counter()
    for split in SPLITS:
        done += _extract_split(model, splits.get(split), split, out, manifest, dev, dtype, batch_size, num_workers)
    shutil.rmtree(out / ".chunks", ignore_errors=True)
    seconds = time.perf_counter() - started
    _logger.info("Features of %s in %s (%d images computed in %.0f s)", backbone, out, done, seconds)
    return {"output_dir": str(out), "backbone": backbone, "num_features": manifest["num_features"], "images": done,
            "seconds": seconds, "images_per_s": done / max(seconds, 1e-9)}


def _check_or_write_manifest(out: Path, manifest: dict) -> None:
    """A new folder gets the manifest; a folder of an earlier try must hold the same settings."""
    path = out / MANIFEST
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        if old != manifest:
            changed = sorted(k for k in manifest if not old or old.get(k) != manifest[k])
            raise UserError(f"{out} holds features computed with other settings ({', '.join(changed)} differ). "
                            "Repeat the same command to continue that run, or give another --output-dir.")
        return
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--output-dir {out} is not empty and holds no {MANIFEST}: give a new or empty folder.")
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, (json.dumps(manifest, indent=1) + "\n").encode())


def _extract_split(model, samples, split: str, out: Path, manifest: dict, device, dtype, batch_size: int,
                   num_workers: int) -> int:
    """Compute the missing chunks of one split, then join them into `<split>.safetensors`. Returns the number
    of images computed now."""
    final = out / f"{split}.safetensors"
    if final.exists():
        return 0
    size = manifest["chunk_size"]
    starts = range(0, len(samples), size)
    chunk_paths = [out / ".chunks" / f"{split}-{i // size:05d}.safetensors" for i in starts]
    todo = [(start, path) for start, path in zip(starts, chunk_paths) if not path.exists()]
    n_todo = sum(min(size, len(samples) - start) for start, _ in todo)
    bar = tqdm(total=len(samples), initial=len(samples) - n_todo, desc=f"features {split}", unit="img",
               file=sys.stderr, mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
    for start, path in todo:
        feats = embed_samples(model, samples[start:start + size], manifest["data_config"], views=manifest["views"],
                              device=device, dtype=dtype, batch_size=batch_size, num_workers=num_workers, bar=bar)
        path.parent.mkdir(exist_ok=True)
        _write_atomic(path, save({"features": feats}))
    bar.close()
    parts = [load_file(str(p))["features"] for p in chunk_paths]
    features = torch.cat(parts) if parts else torch.zeros(0, manifest["num_features"], dtype=torch.float16)
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    meta = {"split": split, "backbone": manifest["backbone"], "class_names": manifest["class_names"],
            "paths": [os.path.relpath(path, manifest["data_dir"]) for path, _ in samples]}
    # one metadata key: safetensors writes several keys in hash order, and the file must be byte-identical
    _write_atomic(final, save({"features": features, "labels": labels}, metadata={"meta": json.dumps(meta)}))
    for p in chunk_paths:
        p.unlink(missing_ok=True)
    return n_todo


def embed_samples(model: torch.nn.Module, samples: list, data_config: dict, *, views: int = 1,
                  device: torch.device | None = None, dtype: torch.dtype | None = None, batch_size: int = 64,
                  num_workers: int = -1, bar=None) -> torch.Tensor:
    """Features (N, D) float16 of (path, label) samples, in their order, with the evaluation preprocessing of
    `data_config` (image_size, mean, std, crop_pct, interpolation)."""
    from .augment import DeviceNormalize, eval_transform
    from .data import ImageDataset, make_loader
    from .utils import autocast, to_model_input

    device = device or next(model.parameters()).device
    d = data_config
    transform = eval_transform(d["image_size"], d["mean"], d["std"], d["crop_pct"], d["interpolation"], uint8=True)
    normalize = DeviceNormalize(d["mean"], d["std"])
    loader = make_loader(ImageDataset(samples, transform, strict=True), batch_size=batch_size, shuffle=False, seed=0,
                         num_workers=num_workers)
    out = []
    for images, _, _, _ in loader:
        images = to_model_input(images, device, normalize)
        with autocast(device, dtype):
            out.append(embed(model, images, views).cpu())
        if bar is not None:
            bar.update(len(images))
    return torch.cat(out).to(torch.float16)


def _write_atomic(path: Path, data: bytes | Callable[[Path], None]) -> None:
    """Write `data` (bytes, or a function that writes the file it is given) to `path` through a temporary file
    in the same folder and `os.replace`; the temporary file is removed on any failure."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if callable(data):
            data(tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"Could not write {path} ({exc.strerror or exc}): free disk space or fix the folder's "
                        "permissions, then repeat the command (finished work is kept).") from exc
    finally:
        tmp.unlink(missing_ok=True)


def read_split(folder: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(features (N, D) float32, labels (N,), metadata: split, backbone, class_names, paths relative to the
    dataset root) of one split."""
    from safetensors import safe_open

    path = Path(folder) / f"{split}.safetensors"
    if not path.is_file():
        raise UserError(f"{path} is missing: {folder} holds no finished {split} split. Run (or finish, by running "
                        "it again) `python -m helpers features ... --output-dir " f"{folder}`.")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
        return f.get_tensor("features").float(), f.get_tensor("labels"), meta


def read_manifest(folder: str | Path) -> dict:
    """The settings a features folder was computed with (features.json)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UserError(f"{folder} is not a features folder ({MANIFEST} is missing). Give a folder written by "
                        "`python -m helpers features`.")
    return json.loads(path.read_text())
