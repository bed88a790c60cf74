"""`python -m helpers features`: cached pooled features, batch-size invariance, a real SIGKILL and restart,
bad input, and the feature widths of the strong backbones of the "Past 95%" track."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch

from helpers.data.splits import load_splits
from helpers.use.features import embed_samples, feature_model, read_split

from .conftest import ROOT, TINY, run_cli


def _small_set(root: Path, n_train: int = 4, n_test: int = 2) -> Path:
    """A Food-101 layout with the first photos per class of the tiny set (symlinked), for cheap subprocess runs."""
    (root / "meta").mkdir(parents=True)
    (root / "images").symlink_to(TINY / "images")
    (root / "meta" / "classes.txt").write_text((TINY / "meta" / "classes.txt").read_text())
    for split, n in (("train", n_train), ("test", n_test)):
        ids = (TINY / "meta" / f"{split}.txt").read_text().split()
        per_class: dict[str, list[str]] = {}
        for i in ids:
            per_class.setdefault(i.split("/")[0], []).append(i)
        (root / "meta" / f"{split}.txt").write_text("\n".join(i for v in per_class.values() for i in v[:n]) + "\n")
    return root


def _features_args(data: Path, out: Path, chunk: int = 4) -> list[str]:
    return ["features", "--data-dir", str(data), "--backbone", "tf_efficientnet_lite0", "--pretrained", "offline",
            "--image-size", "64", "--views", "2", "--batch-size", "4", "--chunk-size", str(chunk), "--num-workers", "0",
            "--device", "cpu", "--output-dir", str(out)]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_features_are_the_same_at_batch_sizes_1_and_32():
    model, dcfg = feature_model("tf_efficientnet_lite0", "offline", 64)
    samples = load_splits("food-101", TINY).test[:32]
    one = embed_samples(model, samples, dcfg, views=2, batch_size=1, num_workers=0).float()
    many = embed_samples(model, samples, dcfg, views=2, batch_size=32, num_workers=0).float()
    assert one.shape == (32, 1280) and one.abs().sum() > 0
    torch.testing.assert_close(one, many, rtol=2e-3, atol=2e-3)  # float16 storage: ~3 significant digits


def test_a_sigkilled_run_restarted_ends_with_the_same_files(tmp_path):
    data = _small_set(tmp_path / "small")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = run_cli(*_features_args(data, whole))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["images"] == 60 and result["num_features"] == 1280
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "helpers", *_features_args(data, killed)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(list((killed / ".chunks").glob("train-*.safetensors"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-run: some chunks written, maybe one half-written temporary file
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (killed / "test.safetensors").exists()
    again = run_cli(*_features_args(data, killed))
    assert again.returncode == 0, again.stderr
    assert 0 < json.loads(again.stdout.strip().splitlines()[-1])["images"] < 60  # the finished chunks were kept
    assert _files(killed) == _files(whole)  # features.json and the three splits, byte for byte; no leftovers
    features, labels, meta = read_split(whole, "test")
    assert features.shape == (20, 1280) and labels.tolist() == sorted(labels.tolist())
    assert meta["paths"][0] == "images/apple_pie/" + (data / "meta" / "test.txt").read_text().split()[0].split("/")[1] + ".jpg"


def test_bad_input_is_one_paragraph_and_writes_nothing(tmp_path):
    missing = run_cli(*_features_args(tmp_path / "nowhere", tmp_path / "out"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr and not (tmp_path / "out").exists()
    out = tmp_path / "other"
    out.mkdir()
    (out / "features.json").write_text(json.dumps({"backbone": "resnet50"}))
    other = run_cli(*_features_args(_small_set(tmp_path / "small"), out))
    assert other.returncode == 2 and "other settings" in other.stderr and "Traceback" not in other.stderr
    assert sorted(p.name for p in out.iterdir()) == ["features.json"]


# The strong backbones of the "Past 95%" track, built with random weights at a small input: (timm kwargs, width).
# Their pretrained widths: SigLIP SO400M 1152, CLIP ViT-L/14 1024 (before CLIP's 768-d projection, which timm
# keeps as the pretrained `head`), EVA-02 base 768, ConvNeXt base 1024.
STRONG = {
    "vit_so400m_patch14_siglip_384": (dict(img_size=28), 1152),
    "vit_large_patch14_clip_quickgelu_336": (dict(img_size=28), 1024),
    "eva02_base_patch14_448": (dict(img_size=28), 768),
    "convnext_base": ({}, 1024),
}


@pytest.mark.parametrize("name", list(STRONG))
def test_strong_backbones_build_and_give_features_of_their_width(name):
    kwargs, width = STRONG[name]
    started = time.perf_counter()
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()
    built = time.perf_counter() - started
    size = kwargs.get("img_size", 32)
    with torch.no_grad():
        features = model(torch.randn(2, 3, size, size))
    assert model.num_features == width and features.shape == (2, width) and torch.isfinite(features).all()
    print(f"{name}: built in {built:.1f} s, {sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters")


def test_a_vit_at_another_input_size_trains_evaluates_and_gives_features(tmp_path):
    """ViT-style models are built for a fixed input size (their position embeddings); `--image-size` builds them
    for that size in train, evaluate, features and a probe's evaluation (the rehearsal found this broken)."""
    data = _small_set(tmp_path / "data")
    run, feats = tmp_path / "run", tmp_path / "feats"
    common = ["--data-dir", str(data), "--backbone", "vit_tiny_patch16_224", "--pretrained", "none",
              "--image-size", "64", "--num-workers", "0", "--device", "cpu"]
    res = run_cli("train", *common, "--epochs", "1", "--max-steps", "2", "--batch-size", "8", "--output-dir",
                  str(run))
    assert res.returncode == 0, res.stderr[-2000:]
    res = run_cli("evaluate", "--checkpoint", str(run), "--data-dir", str(data), "--num-workers", "0")
    assert res.returncode == 0 and json.loads(res.stdout.splitlines()[-1])["n"] == 20, res.stderr[-2000:]
    res = run_cli("features", *common, "--output-dir", str(feats))
    assert res.returncode == 0, res.stderr[-2000:]
    features, _, _ = read_split(feats, "test")
    assert features.shape == (20, 192)  # vit_tiny's width
