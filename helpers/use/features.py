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
uninterrupted run. One command at a time writes a folder (the run lock of `helpers.lock`).

The folder checks itself. `features.json` carries a fingerprint of everything the features depend on: the
backbone, a SHA-256 of its loaded weights (`helpers.models.weights_digest`), the preprocessing, the views and
every split's list of photos and labels. Each chunk and each split file carries that fingerprint, and each chunk
the SHA-1 of every photo's bytes. On a resume a chunk that is damaged (truncated, zeroed), of other settings, or
of a photo replaced since is computed again (with a warning), and so is a damaged or foreign split file;
`read_split` refuses (exit 2) a split whose fingerprint is not its folder's. A backbone with random weights
(`--pretrained none`) keeps them in `backbone.safetensors`: a probe of its features stores them (nothing else
could rebuild them), and a resume uses them. A weights file is recorded by its absolute path.

Unreadable photos (and photos over `helpers.data.MAX_PIXELS`) are skipped and listed in the split's metadata
and the log, as `train` skips them; `--strict-data` stops on the first one (exit 2).
"""

from __future__ import annotations

import argparse
import hashlib
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

from ..base.config import CHOICES
from ..base.errors import UserError
from ..base.io import full_fsync
from ..base.mps_check import device_code

_logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

MANIFEST = "features.json"

BACKBONE_WEIGHTS = "backbone.safetensors"  # the random weights of a `--pretrained none` backbone

VERSION = 2  # 2: fingerprints in the manifest, chunks and splits; photo hashes in chunks


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
    p.add_argument("--strict-data", action="store_true", help="stop on an unreadable photo (default: skip, list)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> dict:
    return extract_features(
        dataset=args.dataset, data_dir=args.data_dir, backbone=args.backbone, pretrained=args.pretrained,
        image_size=args.image_size, views=args.views, output_dir=args.output_dir, batch_size=args.batch_size,
        chunk_size=args.chunk_size, num_workers=args.num_workers, device=args.device, val_fraction=args.val_fraction,
        test_fraction=args.test_fraction, seed=args.seed, strict_data=args.strict_data)


def feature_model(backbone: str, pretrained: str, image_size: int | None = None) -> tuple[torch.nn.Module, dict]:
    """The backbone without its classifier (`num_classes=0`: the model returns pooled pre-logit features) and
    its evaluation data config (image_size, mean, std, crop_pct, interpolation)."""
    from ..training.models import create_model, data_config

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
                     test_fraction: float = 0.2, seed: int = 42, strict_data: bool = False) -> dict:
    """Compute and save the features of the train, val and test splits (see the module docstring).

    Returns:
        {"output_dir", "backbone", "num_features", "images": computed now, "seconds", "images_per_s",
        "skipped": unreadable photos (paths relative to the dataset root)}
    Raises:
        UserError: bad settings, a folder of other settings or in use by another command, or (`strict_data`)
            an unreadable photo.
    """
    from ..base.lock import run_lock
    from ..training.run_folder import check_output_path

    for flag, value, ok in (("--views", views, views in (1, 2)), ("--batch-size", batch_size, batch_size >= 1),
                            ("--chunk-size", chunk_size, chunk_size >= 1)):
        if not ok:
            raise UserError(f"{flag} must be {'1 or 2' if flag == '--views' else 'a positive integer'}, got {value}.")
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output-dir {out} is a file. Give a folder (it is created when missing).")
    check_output_path(out, "--output-dir")
    with run_lock(out, f"--output-dir {out}"):
        return _extract(dataset, data_dir, backbone, pretrained, image_size, views, out, batch_size, chunk_size,
                        num_workers, device, val_fraction, test_fraction, seed, strict_data)


def _extract(dataset, data_dir, backbone, pretrained, image_size, views, out: Path, batch_size, chunk_size,
             num_workers, device, val_fraction, test_fraction, seed, strict_data) -> dict:
    from ..base.devices import amp_dtype, get_device
    from ..data.splits import load_splits
    from ..training.models import weights_digest

    splits = load_splits(dataset, data_dir, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    dev = get_device(device)
    pretrained = weights_source(pretrained)
    model, dcfg = _backbone(out, backbone, pretrained, image_size, seed)
    root = str(Path(data_dir).expanduser().resolve())
    manifest = {"version": VERSION, "backbone": backbone, "pretrained": pretrained,
                "weights_sha256": weights_digest(model), "views": views,
                "data_config": {**dcfg, "mean": list(dcfg["mean"]), "std": list(dcfg["std"])},
                "num_features": int(model.num_features), "dataset": dataset, "data_dir": root,
                "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed,
                "class_names": splits.class_names, "sizes": {s: len(splits.get(s)) for s in SPLITS},
                "photos": {s: _list_digest(splits.get(s), root) for s in SPLITS}, "chunk_size": chunk_size}
    manifest["fingerprint"] = _fingerprint(manifest)
    _check_or_write_manifest(out, manifest)
    if pretrained == "none" and not (out / BACKBONE_WEIGHTS).is_file():
        _write_atomic(out / BACKBONE_WEIGHTS, save(model.state_dict()))
    model.to(dev)
    dtype = amp_dtype(dev, True)
    done, skipped, started = 0, [], time.perf_counter()
    for split in SPLITS:
        n, bad = _extract_split(model, splits.get(split), split, out, manifest, dev, dtype, batch_size, num_workers,
                                strict_data)
        done, skipped = done + n, skipped + bad
    shutil.rmtree(out / ".chunks", ignore_errors=True)
    seconds = time.perf_counter() - started
    _logger.info("Features of %s in %s (%d images computed in %.0f s)", backbone, out, done, seconds)
    if skipped:
        _logger.warning("%d unreadable photo(s) skipped (no features, listed in the splits' metadata): %s%s. "
                        "`python -m helpers check-data` gives the reasons; --strict-data makes them an error.",
                        len(skipped), ", ".join(skipped[:5]), " ..." if len(skipped) > 5 else "")
    return {"output_dir": str(out), "backbone": backbone, "num_features": manifest["num_features"], "images": done,
            "seconds": seconds, "images_per_s": done / max(seconds, 1e-9), "skipped": skipped}


def weights_source(pretrained: str) -> str:
    """`--pretrained` as recorded: hub, offline, none, or a weights file's absolute path (so that the features
    and a probe of them rebuild the backbone from any working folder)."""
    if pretrained in ("hub", "offline", "none"):
        return pretrained
    if pretrained in ("", None):
        return "none"
    return str(Path(pretrained).expanduser().resolve())


def _backbone(out: Path, backbone: str, pretrained: str, image_size: int | None,
              seed: int) -> tuple[torch.nn.Module, dict]:
    """The feature model. Random weights (`none`) are the folder's `backbone.safetensors` when an earlier try
    wrote it, else drawn with `seed`: a resume must embed with the weights the first chunks were made with."""
    if pretrained != "none":
        return feature_model(backbone, pretrained, image_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, dcfg = feature_model(backbone, pretrained, image_size)
    stored = out / BACKBONE_WEIGHTS
    if stored.is_file():
        model.load_state_dict(read_backbone_weights(out))
    return model, dcfg


def read_backbone_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """The random weights of a `--pretrained none` features folder (`backbone.safetensors`)."""
    path = Path(folder) / BACKBONE_WEIGHTS
    try:
        return load_file(str(path))
    except Exception as exc:  # missing, truncated, zeroed: safetensors raises several types
        raise UserError(f"{path} is missing or damaged ({type(exc).__name__}): the random backbone weights that "
                        f"the features of {folder} were computed with are lost. Compute the features again into a "
                        "new folder.") from exc


def _list_digest(samples: list, root: str) -> str:
    """A SHA-1 of a split's photos (paths relative to the dataset root) and labels, in order."""
    digest = hashlib.sha1()
    for path, label in samples:
        digest.update(f"{os.path.relpath(path, root)}\t{label}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _fingerprint(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "fingerprint"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _check_or_write_manifest(out: Path, manifest: dict) -> None:
    """A new folder gets the manifest; a folder of an earlier try must hold the same settings. A damaged
    manifest (a kill cannot cut it: it is written atomically; a copy or a disk can) is written again: every
    chunk and split carries the fingerprint, so what does not belong to these settings is computed again."""
    from ..base.lock import LOCK_NAME

    path = out / MANIFEST
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            _logger.warning("%s is damaged (%s): it is written again from these settings; chunks and splits of "
                            "other settings are computed again.", path, type(exc).__name__)
            _write_atomic(path, (json.dumps(manifest, indent=1) + "\n").encode())
            return
        if old != manifest:
            changed = sorted(k for k in manifest if not isinstance(old, dict) or old.get(k) != manifest[k])
            changed = [k for k in changed if k != "fingerprint"] or ["fingerprint"]
            raise UserError(f"{out} holds features computed with other settings ({', '.join(changed)} differ). "
                            "Repeat the same command to continue that run, or give another --output-dir.")
        return
    if out.exists() and any(p.name != LOCK_NAME for p in out.iterdir()):
        raise UserError(f"--output-dir {out} is not empty and holds no {MANIFEST}: give a new or empty folder.")
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, (json.dumps(manifest, indent=1) + "\n").encode())


def _extract_split(model, samples, split: str, out: Path, manifest: dict, device, dtype, batch_size: int,
                   num_workers: int, strict_data: bool = False) -> tuple[int, list[str]]:
    """Compute the missing chunks of one split, then join them into `<split>.safetensors`. Returns the number
    of images computed now and the unreadable photos skipped (paths relative to the dataset root)."""
    final = out / f"{split}.safetensors"
    root = manifest["data_dir"]
    if final.exists():
        problem, meta = _split_problem(final, manifest, split, samples)
        if problem is None:
            return 0, meta.get("skipped", [])
        _logger.warning("%s %s: it is computed again.", final, problem)
        final.unlink()
    size = manifest["chunk_size"]
    starts = range(0, len(samples), size)
    chunks = {}
    for start in starts:
        path = _chunk_path(out, split, start, size)
        if path.exists():
            loaded = _read_chunk(path, manifest, split, start, samples[start:start + size])
            if isinstance(loaded, str):
                _logger.warning("%s %s: it is computed again.", path, loaded)
                path.unlink()
            else:
                chunks[start] = loaded
    n_todo = sum(min(size, len(samples) - start) for start in starts if start not in chunks)
    bar = tqdm(total=len(samples), initial=len(samples) - n_todo, desc=f"features {split}", unit="img",
               file=sys.stderr, mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
    for start in starts:
        if start in chunks:
            continue
        part = samples[start:start + size]
        hashes = photo_hashes(part)
        bad: list[int] = []
        feats = embed_samples(model, part, manifest["data_config"], views=manifest["views"], device=device,
                              dtype=dtype, batch_size=batch_size, num_workers=num_workers, bar=bar,
                              skipped=None if strict_data else bad)
        kept = torch.tensor([i for i in range(len(part)) if i not in set(bad)], dtype=torch.int64)
        info = {"fingerprint": manifest["fingerprint"], "split": split, "start": start, "photos": hashes}
        path = _chunk_path(out, split, start, size)
        path.parent.mkdir(exist_ok=True)
        _write_atomic(path, save({"features": feats, "kept": kept}, metadata={"chunk": json.dumps(info)}))
        chunks[start] = (feats, kept)
    bar.close()
    parts = [chunks[start] for start in starts]
    features = torch.cat([f for f, _ in parts]) if parts else torch.zeros(0, manifest["num_features"],
                                                                           dtype=torch.float16)
    rows = [start + int(i) for start, (_, kept) in zip(starts, parts) for i in kept]
    skipped = sorted(set(range(len(samples))) - set(rows))
    labels = torch.tensor([samples[i][1] for i in rows], dtype=torch.int64)
    meta = {"split": split, "backbone": manifest["backbone"], "class_names": manifest["class_names"],
            "paths": [os.path.relpath(samples[i][0], root) for i in rows], "fingerprint": manifest["fingerprint"],
            "skipped": [os.path.relpath(samples[i][0], root) for i in skipped]}
    # one metadata key: safetensors writes several keys in hash order, and the file must be byte-identical
    _write_atomic(final, save({"features": features, "labels": labels}, metadata={"meta": json.dumps(meta)}))
    for start in starts:
        _chunk_path(out, split, start, size).unlink(missing_ok=True)
    return n_todo, meta["skipped"]


def _chunk_path(out: Path, split: str, start: int, size: int) -> Path:
    return out / ".chunks" / f"{split}-{start // size:05d}.safetensors"


def photo_hashes(samples: list) -> list[str]:
    """The SHA-1 of each photo's bytes ("missing" for a file that cannot be read)."""
    out = []
    for path, _ in samples:
        try:
            out.append(hashlib.sha1(Path(path).read_bytes()).hexdigest())
        except OSError:
            out.append("missing")
    return out


def _read_chunk(path: Path, manifest: dict, split: str, start: int,
                samples: list) -> tuple[torch.Tensor, torch.Tensor] | str:
    """A finished chunk's (features, kept rows), or what is wrong with it: damaged, of other settings, of
    photos that changed since."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            info = json.loads((f.metadata() or {})["chunk"])
            feats, kept = f.get_tensor("features"), f.get_tensor("kept")
    except Exception as exc:  # truncated, zeroed, foreign: safetensors and json raise several types
        return f"is damaged ({type(exc).__name__})"
    if (info.get("fingerprint"), info.get("split"), info.get("start")) != (manifest["fingerprint"], split, start):
        return "was computed with other settings"
    if feats.ndim != 2 or feats.shape != (len(kept), manifest["num_features"]) or len(kept) > len(samples):
        return f"holds features of the wrong shape {tuple(feats.shape)}"
    now = photo_hashes(samples)
    changed = [p for (p, _), a, b in zip(samples, info.get("photos", []), now) if a != b]
    if changed or len(info.get("photos", [])) != len(now):
        names = ", ".join(os.path.relpath(p, manifest["data_dir"]) for p in changed[:3])
        return f"holds features of {len(changed) or 'some'} photo(s) changed since it was written ({names})"
    return feats, kept


def _split_problem(path: Path, manifest: dict, split: str, samples: list) -> tuple[str | None, dict]:
    """(None, metadata) when a split file is whole and of these settings, else (what is wrong, {})."""
    try:
        features, labels, meta = _open_split(path)
    except Exception as exc:  # truncated, zeroed, foreign
        return f"is damaged ({type(exc).__name__})", {}
    if meta.get("fingerprint") != manifest["fingerprint"] or meta.get("split") != split:
        return "was not computed with these settings (another folder's file?)", {}
    if (features.shape[0] != len(labels) or features.shape[0] != len(meta.get("paths", []))
            or features.shape[0] + len(meta.get("skipped", [])) != len(samples)):
        return "does not hold one row per photo", {}
    return None, meta


def _open_split(path: Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
        return f.get_tensor("features"), f.get_tensor("labels"), meta


@device_code
def embed_samples(model: torch.nn.Module, samples: list, data_config: dict, *, views: int = 1,
                  device: torch.device | None = None, dtype: torch.dtype | None = None, batch_size: int = 64,
                  num_workers: int = -1, bar=None, skipped: list[int] | None = None) -> torch.Tensor:
    """Features (N, D) float16 of (path, label) samples, in their order, with the evaluation preprocessing of
    `data_config` (image_size, mean, std, crop_pct, interpolation).

    Args:
        skipped: None: an unreadable photo raises `BadImageError`. A list: unreadable photos are skipped, their
            positions appended to it, and the result has a row for each readable photo only.
    """
    from ..base.devices import autocast, to_model_input
    from ..data.augment import DeviceNormalize, eval_transform
    from ..data.loaders import ImageDataset, make_loader

    device = device or next(model.parameters()).device
    d = data_config
    transform = eval_transform(d["image_size"], d["mean"], d["std"], d["crop_pct"], d["interpolation"], uint8=True)
    normalize = DeviceNormalize(d["mean"], d["std"])
    loader = make_loader(ImageDataset(samples, transform, strict=skipped is None), batch_size=batch_size,
                         shuffle=False, seed=0, num_workers=num_workers)
    out = []
    for images, _, _, replaced in loader:
        images = to_model_input(images, device, normalize)
        with autocast(device, dtype):
            feats = embed(model, images, views).cpu()
        if skipped is not None:  # an unreadable photo came back as the next readable one: drop that row
            skipped += [int(i) for i in replaced if i >= 0]
            feats = feats[replaced < 0]
        out.append(feats)
        if bar is not None:
            bar.update(len(images))
    if not out:
        return torch.zeros(0, int(model.num_features), dtype=torch.float16)
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
                full_fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"Could not write {path} ({exc.strerror or exc}): free disk space or fix the folder's "
                        "permissions, then repeat the command (finished work is kept).") from exc
    finally:
        tmp.unlink(missing_ok=True)


def read_split(folder: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(features (N, D) float32, labels (N,), metadata: split, backbone, class_names, paths relative to the
    dataset root, skipped photos, fingerprint) of one split, checked to belong to its folder's settings.

    Raises:
        UserError: the split is missing, damaged, or was not computed with the folder's settings.
    """
    path = Path(folder) / f"{split}.safetensors"
    manifest = read_manifest(folder)
    if not path.is_file():
        raise UserError(f"{path} is missing: {folder} holds no finished {split} split. Run (or finish, by running "
                        "it again) `python -m helpers features ... --output-dir " f"{folder}`.")
    try:
        features, labels, meta = _open_split(path)
    except Exception as exc:  # truncated, zeroed, not a safetensors file
        raise UserError(f"{path} is damaged ({type(exc).__name__}: {str(exc)[:120]}). Run the `features` command "
                        f"of {folder} again (its settings are in {MANIFEST}): it computes the split again.") from exc
    if meta.get("fingerprint") != manifest["fingerprint"] or meta.get("split") != split:
        raise UserError(
            f"{path} was not computed with the settings of {Path(folder) / MANIFEST} (it holds features of "
            f"{meta.get('backbone')}; the folder is for {manifest['backbone']} with --pretrained "
            f"{manifest['pretrained']}): it was copied in from another features folder or changed. Run the "
            f"`features` command of {folder} again: it computes the split again.")
    if features.shape[0] != len(labels) or features.shape[0] != len(meta.get("paths", [])):
        raise UserError(f"{path} does not hold one row per photo. Delete it and run the `features` command of "
                        f"{folder} again.")
    return features.float(), labels, meta


def read_manifest(folder: str | Path) -> dict:
    """The settings a features folder was computed with (features.json).

    Raises:
        UserError: no features folder, a damaged `features.json`, or one of an older version (no fingerprint).
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UserError(f"{folder} is not a features folder ({MANIFEST} is missing). Give a folder written by "
                        "`python -m helpers features`.")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is damaged ({type(exc).__name__}: {str(exc)[:80]}). Run the `features` command "
                        f"of {folder} again (same flags): it writes {MANIFEST} again and keeps what still "
                        "belongs to it.") from exc
    if not isinstance(manifest, dict) or manifest.get("version") != VERSION or "fingerprint" not in manifest:
        raise UserError(f"{path} was written by an older version of `features` (no fingerprint to check its "
                        "splits against). Compute the features again into a new folder.")
    return manifest
