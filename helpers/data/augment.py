"""Albumentations 2.x pipelines: training presets, evaluation, test-time views, and a preview grid.

Every pipeline is built with `strict=True`, so a misspelt or removed argument raises instead of being ignored.
The plan's 1.x arguments are translated: `var_limit` -> `std_range`, `max_holes/max_height` ->
`num_holes_range/hole_height_range`, `ShiftScaleRotate` -> `Affine`.
"""

from __future__ import annotations

import math
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

PRESETS = ("none", "light", "basic", "advanced")

_INTERPOLATION = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR}


def _compose(transforms: list) -> A.Compose:
    return A.Compose(transforms, strict=True)


def _finish(mean: tuple[float, ...], std: tuple[float, ...], uint8: bool = False) -> list:
    if uint8:  # normalised later, on the device, by DeviceNormalize
        return [ToTensorV2()]
    return [A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]


class DeviceNormalize:
    """Normalise uint8 CHW batches on the device, bit-identical to the pipelines' `A.Normalize` on the CPU.

    The trainer's loaders send uint8 batches (`uint8=True` pipelines): a quarter of the bytes to collate, pass
    between processes, pin and copy, and no float work in the workers. `(x - mean) * scale` runs in float32 with
    `A.Normalize`'s own float32 constants, and is checked at construction against what `A.Normalize` returns for
    all 256 levels of each channel, so the model sees exactly the numbers a float pipeline would give it. Float
    batches pass through unchanged.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        norm = A.Normalize(mean=mean, std=std, max_pixel_value=255.0)
        offset = getattr(norm, "mean_np", np.array(mean, dtype=np.float32) * 255.0)
        scale = getattr(norm, "denominator", np.reciprocal(np.array(std, dtype=np.float32) * 255.0))
        self.mean = torch.from_numpy(np.asarray(offset, dtype=np.float32)).view(1, 3, 1, 1)
        self.scale = torch.from_numpy(np.asarray(scale, dtype=np.float32)).view(1, 3, 1, 1)
        ramp = np.repeat(np.arange(256, dtype=np.uint8).reshape(256, 1, 1), 3, axis=2)
        expected = torch.from_numpy(norm(image=ramp)["image"][:, 0, :])  # (256, 3) float32
        levels = torch.arange(256, dtype=torch.float32).view(256, 1)
        if not torch.equal((levels - self.mean.view(1, 3)) * self.scale.view(1, 3), expected):
            raise RuntimeError("albumentations' Normalize no longer computes (x - mean) * scale in float32: "
                               "update DeviceNormalize")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            return images
        if self.mean.device != images.device:
            self.mean, self.scale = self.mean.to(images.device), self.scale.to(images.device)
        return images.float().sub_(self.mean).mul_(self.scale)


def light_transforms(size: int) -> list:
    """Crop and flip only: for short fine-tunes of a pretrained model, where stronger augmentation underfits."""
    return [
        A.RandomResizedCrop(size=(size, size), scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), interpolation=cv2.INTER_CUBIC),
        A.HorizontalFlip(p=0.5),
    ]


def basic_transforms(size: int) -> list:
    """The plan's current augmentations: crop, flip, colour jitter, shift/scale/rotate, cutout."""
    return [
        A.RandomResizedCrop(size=(size, size), scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3), interpolation=cv2.INTER_CUBIC),
        A.HorizontalFlip(p=0.5),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05, p=0.5),
        A.Affine(translate_percent=(-0.0625, 0.0625), scale=(0.9, 1.1), rotate=(-15, 15), border_mode=cv2.BORDER_REFLECT_101, p=0.5),
        A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.15), hole_width_range=(0.05, 0.15), fill=0, p=0.3),
    ]


def advanced_transforms(size: int) -> list:
    """basic plus the plan's section 3.2, its 1.x strengths translated to the 2.x arguments.

    GaussNoise var_limit=(10, 50) on 0-255 pixels is a std of sqrt(10)..sqrt(50) = 3.2..7.1, i.e. std_range
    (0.012, 0.028) of the full range. CoarseDropout max_holes=8, 32 px holes at 224 px: up to 8 holes of 1/7 side.
    """
    base = basic_transforms(size)[:-1]  # the stronger CoarseDropout below replaces basic's
    return base + [
        A.RandomBrightnessContrast(brightness_limit=0.3, contrast_limit=0.3, p=0.5),
        A.HueSaturationValue(hue_shift_limit=20, sat_shift_limit=30, val_shift_limit=20, p=0.5),
        A.GaussNoise(std_range=(math.sqrt(10) / 255, math.sqrt(50) / 255), p=0.3),
        A.GaussianBlur(blur_limit=(3, 7), p=0.3),
        A.RandomGamma(gamma_limit=(80, 120), p=0.3),
        A.CoarseDropout(num_holes_range=(1, 8), hole_height_range=(0.05, 1 / 7), hole_width_range=(0.05, 1 / 7), fill=0, p=0.5),
    ]


def train_transform(preset: str, size: int, mean: tuple[float, ...], std: tuple[float, ...], *,
                    uint8: bool = False) -> A.Compose:
    """The training pipeline for a preset (none | light | basic | advanced), ending in a normalised CHW float tensor
    (`uint8=True`: a uint8 CHW tensor, for `DeviceNormalize` on the device)."""
    if preset == "none":
        return eval_transform(size, mean, std, uint8=uint8)
    if preset == "light":
        return _compose(light_transforms(size) + _finish(mean, std, uint8))
    if preset == "basic":
        return _compose(basic_transforms(size) + _finish(mean, std, uint8))
    if preset == "advanced":
        return _compose(advanced_transforms(size) + _finish(mean, std, uint8))
    raise ValueError(f"unknown augmentation preset {preset!r}; use one of {PRESETS}")


def eval_transform(size: int, mean: tuple[float, ...], std: tuple[float, ...], crop_pct: float = 0.875,
                   interpolation: str = "bicubic", *, uint8: bool = False) -> A.Compose:
    """Resize the short side to size / crop_pct, then centre-crop size x size (timm's evaluation recipe)."""
    return _compose(_resize_crop(size, crop_pct, interpolation) + _finish(mean, std, uint8))


def _resize_crop(size: int, crop_pct: float, interpolation: str = "bicubic") -> list:
    return [
        A.SmallestMaxSize(max_size=int(math.floor(size / crop_pct)), interpolation=_INTERPOLATION.get(interpolation, cv2.INTER_CUBIC)),
        A.CenterCrop(height=size, width=size),
    ]


def tta_transforms(n: int, size: int, mean: tuple[float, ...], std: tuple[float, ...], crop_pct: float = 0.875,
                   interpolation: str = "bicubic", *, uint8: bool = False) -> list[A.Compose]:
    """N deterministic test-time views. View 0 is exactly `eval_transform`; then its mirror, then crops at
    other scales and their mirrors (crop_pct 1.0 and 0.75).
    """
    views = []
    for pct in (crop_pct, 1.0, 0.75):
        base = _resize_crop(size, pct, interpolation)
        views.append(_compose(base + _finish(mean, std, uint8)))
        views.append(_compose(base + [A.HorizontalFlip(p=1.0)] + _finish(mean, std, uint8)))
    if not 1 <= n <= len(views):
        raise ValueError(f"TTA supports 1 to {len(views)} views, got {n}")
    return views[:n]


def preview_grid(image: np.ndarray, transform: A.Compose, n: int = 8, seed: int = 0) -> list[np.ndarray]:
    """`n` augmented versions of one RGB image (uint8 HWC, without normalisation), for showing a preset.

    Args:
        image: an RGB uint8 array, as returned by `helpers.data.images.read_image`.
        transform: a pipeline from `train_transform`; its Normalize and ToTensorV2 steps are left out.
    """
    visual = A.Compose([t for t in transform.transforms if not isinstance(t, (A.Normalize, ToTensorV2))], strict=True)
    out = []
    for i in range(n):
        visual.set_random_seed(seed + i)
        out.append(visual(image=image)["image"])
    return out


def preset_steps(preset: str, size: int) -> dict[str, Any]:
    """The steps of a preset's pipeline by name, each set to always apply (p=1), for previews."""
    import copy

    builders = {"light": light_transforms, "basic": basic_transforms,
                "advanced": advanced_transforms}
    if preset not in builders:
        raise ValueError(f"preset {preset!r} has no steps to show; use one of {', '.join(builders)}")
    steps: dict[str, Any] = {}
    for step in builders[preset](size):
        step = copy.deepcopy(step)
        step.p = 1.0
        label = type(step).__name__
        if label in steps:
            label = f"{label} ({sum(k.startswith(label) for k in steps) + 1})"
        steps[label] = step
    return steps
