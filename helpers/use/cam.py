"""Where a trained model looked: class activation maps (Grad-CAM, Selvaraju et al. 2017) with the `grad-cam`
library (pytorch-grad-cam), for a photo's predicted class and its true class, on the crop the model saw.

    maps = photo_maps("runs/b0", ["data/food-101-tiny/images/baklava/1006121.jpg"], classes=["baklava"])
    maps[0].crop                   # (S, S, 3) uint8: the photo resized and centre-cropped as evaluate does
    maps[0].maps["baklava"]        # (S, S) float32 in [0, 1]: where evidence for the class lies

Grad-CAM weighs the channels of one layer by the mean gradient of the class's logit over them and keeps the
positive sum: a coarse map (the layer's grid, 3 x 3 for a 96 px crop at stride 32, 4 x 4 at 112 px) upsampled to
the crop, each map scaled to its own maximum. The layer, per model family (`target_layer`):

- timm CNNs: the final feature map, the one the head pools (`forward_features`' output: for EfficientNets after
  the 1x1 conv_head, one layer past `feature_info[-1]`, see `_AtFeatureMap`; channels-last maps, e.g. Swin's,
  are turned channels-first);
- ViTs and EVA (the past-95 route): the last block's first norm, its tokens reshaped to the patch grid after the
  model's prefix tokens (class and register tokens, `num_prefix_tokens`). After the last block only the pooled
  token reaches the head, so its input is where the patch tokens still matter (the library's own ViT recipe);
- a linear probe over one frozen backbone: that backbone's layer, with the probe's head on its L2-normalised
  features (a probe of several backbones is refused: each reads its own crop and grid, so no one map is the
  probe's).

The model's weights are frozen while a map is computed and the input's gradient is switched on instead, so the
gradients reach the layer whatever the weights' `requires_grad` (a probe's backbone is frozen), and no weight
gradient is computed or left behind. The forward and backward passes run on the model's device in float32 (the
MPS check mode watches them); the maps are finished on the host by the library (numpy).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..base.devices import get_device, to_model_input
from ..base.errors import UserError
from ..base.mps_check import device_code
from ..data import augment
from ..data.images import BadImageError, read_image
from ..training.trained import Trained

_logger = logging.getLogger(__name__)


@dataclass
class PhotoMaps:
    """One photo as the model saw it, its prediction, and a map per class asked for."""

    path: str
    crop: np.ndarray  # (S, S, 3) uint8: the photo after the model's evaluation resize and centre crop
    predicted: str  # the model's top-1 class on this crop
    probability: float  # its softmax probability
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # {class: (S, S) float32 in [0, 1]}, predicted first


# ----------------------------------------------------------------------------------------------------------------
# The layer per model family


def target_layer(model: nn.Module) -> tuple[nn.Module, nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """What Grad-CAM runs and reads in a timm model: the module to run (the model, or the model split at its
    final feature map), the layer whose output it reads, and the transform of that output to (N, C, h, w).

    Raises:
        UserError: a model that is neither ViT-like (blocks, patch_embed, prefix tokens) nor a timm model with
            `forward_features` and `forward_head`.
    """
    blocks, patch_embed = getattr(model, "blocks", None), getattr(model, "patch_embed", None)
    if blocks is not None and patch_embed is not None and hasattr(model, "num_prefix_tokens"):
        layer = getattr(blocks[-1], "norm1", None)
        if layer is None:
            raise UserError(f"{type(model).__name__}'s last block has no norm1: no class activation map for it.")
        grid = tuple(getattr(patch_embed, "grid_size", ()) or ())
        return model, layer, _TokensToGrid(int(model.num_prefix_tokens), grid)
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise UserError(f"{type(model).__name__} is not a timm model with forward_features and forward_head: the "
                        "course draws class activation maps for timm CNNs and ViTs.")
    split = _AtFeatureMap(model)
    return split, split.feature_map, _ChannelsFirst(int(getattr(model, "num_features", 0)))


class _AtFeatureMap(nn.Module):
    """A timm CNN as `forward_head(feature_map(forward_features(x)))`, the same function as the model (timm's
    `forward`), with an identity where the final feature map leaves the body: the layer Grad-CAM reads.

    That map, not `feature_info[-1]`, because it is what the head pools: for a head that pools and applies a linear
    layer, Grad-CAM there is exactly CAM (the class's weights against each position's features, Zhou et al. 2016).
    For EfficientNets `feature_info[-1]` is the last block (320 channels) before the 1x1 conv_head (1280), and on
    the pasted photos of scripts/cam_sanity.py its maps put less of their mass on the photo (its layer table)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.feature_map = model, nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.feature_map(self.model.forward_features(x)))


class _TokensToGrid:
    """(N, prefix + h*w, C) tokens -> (N, C, h, w): the prefix tokens dropped, the rest laid on the patch grid."""

    def __init__(self, prefix: int, grid: tuple[int, ...]):
        self.prefix, self.grid = prefix, grid

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim == 4:  # a model that keeps its tokens as (N, h, w, C)
            return tokens.permute(0, 3, 1, 2)
        patches = tokens[:, self.prefix:, :]
        n = patches.shape[1]
        h, w = self.grid if len(self.grid) == 2 and self.grid[0] * self.grid[1] == n else (round(n ** 0.5),) * 2
        if h * w != n:
            raise UserError(f"{n} patch tokens (after {self.prefix} prefix tokens) make no square grid: the map "
                            "cannot be laid on the image.")
        return patches.reshape(patches.shape[0], h, w, patches.shape[2]).permute(0, 3, 1, 2)


class _ChannelsFirst:
    """A feature map as (N, C, h, w): channels-last ones (Swin's, some hybrids') are permuted."""

    def __init__(self, channels: int):
        self.channels = channels

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4 and x.shape[1] != self.channels and x.shape[-1] == self.channels:
            return x.permute(0, 3, 1, 2)
        return x


# ----------------------------------------------------------------------------------------------------------------
# The model to explain


class _ProbeOnImages(nn.Module):
    """A one-backbone probe as a differentiable model of a (member-normalised) batch: the backbone's pooled
    features, L2-normalised, and the probe's head. `embed` (what the probe itself runs) is gradient-free, so the
    probe's forward cannot be used for maps.

    The features' norm is held as a constant in the backward pass (the logits are the probe's all the same): the
    probe's logits do not change when every feature scales together, so the exact gradient has no component
    along the features, and Grad-CAM's sum of gradient-weighted activations cancels to about zero (all-zero maps
    for most photos of a lite0 probe). With the norm fixed, the map is the linear head's class weights read
    against the layer's activations, as the original CAM (Zhou et al. 2016) reads a linear head.

    With `views == 2` the probe's features are the mean of the photo's and its mirror's: the mirror's features
    are computed here without gradient, so the logits are the probe's own and the map shows how the plain view's
    features moved them. The library keeps the first activation of the hooked layer (the plain view's) and the
    only gradient (the plain view's)."""

    def __init__(self, backbone: nn.Module, head: nn.Linear, views: int):
        super().__init__()
        self.backbone, self.head, self.views = backbone, head, views

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x).float()
        if self.views == 2:
            with torch.no_grad():
                mirrored = self.backbone(torch.flip(x, dims=[3])).float()
            feats = (feats + mirrored) / 2
        norm = feats.norm(dim=1, keepdim=True).clamp_min(1e-12).detach()  # F.normalize's value, a constant
        return self.head((feats / norm).to(self.head.weight.dtype))


def why_no_map(trained: Trained | list | tuple) -> str | None:
    """Why a model has no single class activation map (an ensemble of runs, a probe over several backbones: each
    member reads the photo at its own size and crop), or None when `cam_model` can draw its maps."""
    if isinstance(trained, (list, tuple)):
        return (f"an ensemble of {len(trained)} runs has no single class activation map (each member looks at its "
                "own grid): the photos are shown without maps. Draw maps for one of its runs.")
    backbones = getattr(trained.model, "backbones", None)
    if getattr(trained.model, "is_probe", False) and backbones is not None and len(backbones) != 1:
        names = " + ".join(m["backbone"] for m in trained.model.members)
        return (f"{trained.source} is a probe over {len(backbones)} backbones ({names}): each reads the photo at "
                "its own size and crop, and a class activation map lies on one backbone's grid, so no single map "
                "is the probe's. Draw maps for a probe of one backbone, or a fine-tuned run.")
    return None


def cam_model(trained: Trained) -> tuple[nn.Module, nn.Module, Callable[[torch.Tensor], torch.Tensor], dict]:
    """What the maps explain: the module to run (its logits are the model's), the layer Grad-CAM reads in it and
    the transform of that layer's output to (N, C, h, w) (`target_layer`), and the data config of its input
    (image_size, mean, std, crop_pct, interpolation). A probe's is its one backbone with its head.

    Raises:
        UserError: a probe over several backbones, or a model family without a known layer.
    """
    model = trained.model
    if not getattr(model, "is_probe", False):
        module, layer, reshape = target_layer(model)
        return module, layer, reshape, trained.data_config
    refusal = why_no_map(trained)
    if refusal:
        raise UserError(refusal)
    member = model.members[0]
    backbone, layer, reshape = target_layer(model.backbones[0])
    return _ProbeOnImages(backbone, model.head, int(member.get("views", 1))), layer, reshape, member["data_config"]


def load_crop(path: str | Path, data_config: dict) -> np.ndarray:
    """The photo as the model sees it at evaluation: resized to image_size / crop_pct on its short side and
    centre-cropped (`augment.eval_transform`), as (S, S, 3) uint8 RGB.

    Raises:
        UserError: the file is not a readable photo.
    """
    d = data_config
    try:
        image = read_image(str(path))
    except (BadImageError, OSError) as exc:
        raise UserError(f"{path} is not a readable photo ({exc}): no map for it.") from exc
    transform = augment.eval_transform(d["image_size"], d["mean"], d["std"], d["crop_pct"], d["interpolation"],
                                       uint8=True)
    return transform(image=image)["image"].permute(1, 2, 0).numpy()


# ----------------------------------------------------------------------------------------------------------------
# Maps


def photo_maps(model: Trained | str | Path, photos: Sequence[str | Path], *,
               classes: Sequence[str | Sequence[str] | None] | None = None, image_size: int | None = None,
               batch_size: int = 8, device: str = "auto") -> list[PhotoMaps]:
    """Grad-CAM maps of photos for the model's predicted class and, where given, other classes (the true one).

    Args:
        model: a run folder or checkpoint (fine-tuned, or a probe of one backbone), or a loaded `Trained`
            (used on its own device).
        photos: photo files.
        classes: per photo, a class name of the model, a list of them, or None: more maps besides the top-1's
            (e.g. the true class of a mistake).
        image_size: None: the crop the model sees at evaluation; else each photo whole, resized to this size (a
            CNN reads any size; `canvas_check` uses it).
        device: where a run folder is loaded (auto: cuda, then mps, then cpu).
    Returns:
        One `PhotoMaps` per photo, in order: the crop the model saw, its top-1 and probability, and the maps
        (the top-1's first).
    Raises:
        UserError: an unreadable photo, a class the model does not have, a probe of several backbones, or a model
            family without a known layer.
    """
    if not isinstance(model, Trained):
        if isinstance(model, (list, tuple)):
            raise UserError("Class activation maps are drawn for one model: give one run, not an ensemble.")
        from .runs import load_trained

        model = load_trained(model, device=get_device(device))
    photos = [str(p) for p in photos]
    asked = [[] if c is None else [c] if isinstance(c, str) else list(c)
             for c in (classes if classes is not None else [None] * len(photos))]
    if len(asked) != len(photos):
        raise ValueError(f"{len(photos)} photos but {len(asked)} entries of classes")
    index = {c: i for i, c in enumerate(model.class_names)}
    unknown = sorted({c for names in asked for c in names if c not in index})
    if unknown:
        raise UserError(f"{model.source} has no class {', '.join(unknown[:5])}: its classes are "
                        f"{', '.join(model.class_names[:10])}{'...' if len(model.class_names) > 10 else ''}.")
    _grad_cam()  # a missing library is named before any work
    module, layer, reshape, data_config = cam_model(model)
    if image_size is not None:  # the whole photo at that size: resized, nothing cropped
        data_config = {**data_config, "image_size": image_size, "crop_pct": 1.0}
    out: list[PhotoMaps] = []
    for start in range(0, len(photos), batch_size):
        paths = photos[start: start + batch_size]
        crops = [load_crop(p, data_config) for p in paths]
        wanted = [[index[c] for c in names] for names in asked[start: start + batch_size]]
        out += _batch_maps((module, layer, reshape), data_config, paths, crops, wanted, model.class_names)
    return out


@device_code
def _batch_maps(explained: tuple, data_config: dict, paths: list[str], crops: list[np.ndarray],
                wanted: list[list[int]], class_names: list[str]) -> list[PhotoMaps]:
    """The maps of one batch: every photo's top-1 class's, then each wanted class's (one pass per round)."""
    grad_cam = _grad_cam()
    GradCAM, ClassifierOutputTarget = grad_cam.GradCAM, grad_cam.utils.model_targets.ClassifierOutputTarget
    module, layer, reshape = explained
    device = next(module.parameters()).device
    images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
    x = to_model_input(images, device, augment.DeviceNormalize(data_config["mean"], data_config["std"]),
                       torch.contiguous_format)
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)  # gradients flow from the input instead: none are left on the weights
    cam = GradCAM(model=module, target_layers=[layer], reshape_transform=reshape)
    cam.compute_input_gradient = True  # the input needs a gradient for the layer's to exist (GradCAM has no arg)
    try:
        top_maps = cam(x, targets=None)  # the library maps each photo's top-1
        probs = torch.softmax(cam.outputs.detach().float(), dim=1).cpu()
        top = probs.argmax(dim=1).tolist()
        results = [PhotoMaps(p, c, class_names[t], float(probs[i, t]), {class_names[t]: top_maps[i]})
                   for i, (p, c, t) in enumerate(zip(paths, crops, top))]
        rest = [[w for w in dict.fromkeys(ws) if w != t] for ws, t in zip(wanted, top)]
        for round_ in range(max(map(len, rest), default=0)):
            rows = [i for i, ws in enumerate(rest) if len(ws) > round_]
            maps = cam(x[rows], targets=[ClassifierOutputTarget(rest[i][round_]) for i in rows])
            for j, i in enumerate(rows):
                results[i].maps[class_names[rest[i][round_]]] = maps[j]
    finally:
        cam.activations_and_grads.release()  # the hooks (not `with cam`: its __exit__ swallows IndexErrors)
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)
    for r in results:
        r.maps = {k: np.asarray(v, dtype=np.float32) for k, v in r.maps.items()}
    return results


def _grad_cam():
    """The grad-cam library (imported on first use: it imports pyplot, scipy and scikit-learn)."""
    try:
        import pytorch_grad_cam
        import pytorch_grad_cam.utils.image
        import pytorch_grad_cam.utils.model_targets
    except ImportError as exc:
        raise UserError("Class activation maps need the grad-cam library: pip install -r requirements.txt (it pins "
                        f"grad-cam and its dependencies). The import failed with: {exc}") from exc
    return pytorch_grad_cam


def overlay(crop: np.ndarray, cam_map: np.ndarray, image_weight: float = 0.55) -> np.ndarray:
    """The map over the crop as a heat map (the library's `show_cam_on_image`, jet: red is where the class's
    evidence is strongest), as (S, S, 3) uint8 RGB."""
    show_cam_on_image = _grad_cam().utils.image.show_cam_on_image
    return show_cam_on_image(crop.astype(np.float32) / 255.0, cam_map, use_rgb=True, image_weight=image_weight)


# ----------------------------------------------------------------------------------------------------------------
# A sanity check: a photo pasted on a grey canvas, where does the map's mass lie?


def mass_inside(cam_map: np.ndarray, box: np.ndarray) -> float:
    """The share of a map's mass inside a boolean mask of the same shape (a uniform map gives `box.mean()`);
    0 for an all-zero map."""
    total = float(cam_map.sum())
    return float(cam_map[box].sum()) / total if total > 0 else 0.0


def paste_on_canvas(path: str | Path, out: str | Path, *, canvas: int, side: int, corner: int,
                    margin: int) -> tuple[int, int]:
    """Write `out` (PNG): the photo's centre square resized to `side` px on a neutral grey `canvas` px square, in
    corner 0-3 (top-left, top-right, bottom-left, bottom-right) `margin` px from the edges. Returns (top, left)."""
    import cv2

    image = read_image(str(path))
    h, w = image.shape[:2]
    short = min(h, w)
    square = image[(h - short) // 2: (h - short) // 2 + short, (w - short) // 2: (w - short) // 2 + short]
    board = np.full((canvas, canvas, 3), 128, dtype=np.uint8)
    top = margin if corner in (0, 1) else canvas - margin - side
    left = margin if corner in (0, 2) else canvas - margin - side
    board[top: top + side, left: left + side] = cv2.resize(square, (side, side), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(out), cv2.cvtColor(board, cv2.COLOR_RGB2BGR))
    return top, left


def box_in_crop(top: int, left: int, side: int, canvas: int, data_config: dict) -> np.ndarray:
    """Where a `side` px box at (top, left) of a `canvas` px image lies in the model's crop of it: the box drawn
    on a black image and put through the same evaluation resize and crop. Returns an (S, S) bool mask."""
    board = np.zeros((canvas, canvas, 3), dtype=np.uint8)
    board[top: top + side, left: left + side] = 255
    d = data_config
    transform = augment.eval_transform(d["image_size"], d["mean"], d["std"], d["crop_pct"], d["interpolation"],
                                       uint8=True)
    return transform(image=board)["image"][0].numpy() > 127


def canvas_check(model: Trained | str | Path, samples: Sequence[tuple[str, str]], folder: str | Path, *,
                 canvas: int, side: int = 112, whole: bool = False, device: str = "auto"
                 ) -> tuple[list[dict], list[PhotoMaps], list[np.ndarray]]:
    """Each photo pasted at `side` px on a grey `canvas` px square (in the corners in turn), and the share of its
    maps' mass inside the photo's box, against the box's share of the image (what a uniform map gives). A map that
    follows the food puts well above that share inside.

    Args:
        samples: (photo path, true class) pairs.
        folder: where the pasted photos are written.
        whole: False: the model reads the canvas as it reads any photo (resized to its size and centre-cropped,
            the photo kept inside the crop), so the photo is smaller than `side` px in what it sees; True: the
            model reads the whole canvas at its own size (a CNN reads any size), the photo at `side` px.
    Returns:
        One row per photo ({"photo", "pasted", "canvas", "true", "predicted", "inside_true", "inside_predicted",
        "uniform"}), the photos' maps (with the true class's) and the boxes in the image the model read ((S, S)
        bool masks).
    """
    if not isinstance(model, Trained):
        from .runs import load_trained

        model = load_trained(model, device=get_device(device))
    d = cam_model(model)[3]
    if whole:
        d = {**d, "image_size": canvas, "crop_pct": 1.0}
    margin = int(np.ceil(canvas * (1 - d["crop_pct"]) / 2)) + 2  # inside what the centre crop keeps
    if canvas - 2 * margin < side:
        raise UserError(f"A {side} px photo does not fit a {canvas} px canvas inside the model's centre crop "
                        f"(crop_pct {d['crop_pct']}): use a canvas of at least {side + 2 * margin} px.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths, boxes = [], []
    for k, (path, _) in enumerate(samples):
        out = folder / f"{canvas}_{k:03d}_{Path(path).stem}.png"
        top, left = paste_on_canvas(path, out, canvas=canvas, side=side, corner=k % 4, margin=margin)
        paths.append(out)
        boxes.append(box_in_crop(top, left, side, canvas, d))
    maps = photo_maps(model, paths, classes=[c for _, c in samples], image_size=canvas if whole else None)
    rows = [{"photo": str(path), "pasted": str(m.path), "canvas": canvas, "true": c, "predicted": m.predicted,
             "inside_true": mass_inside(m.maps[c], box), "inside_predicted": mass_inside(m.maps[m.predicted], box),
             "uniform": float(box.mean())}
            for (path, c), m, box in zip(samples, maps, boxes)]
    return rows, maps, boxes


__all__ = ["PhotoMaps", "photo_maps", "target_layer", "cam_model", "load_crop", "overlay", "mass_inside",
           "paste_on_canvas", "box_in_crop", "canvas_check"]
