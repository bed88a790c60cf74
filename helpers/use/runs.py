"""Loading a run: a fine-tuned run or checkpoint, or a linear-probe run, rebuilt as a model in eval mode with its
classes and preprocessing. Every command that uses a trained model (evaluate, ensemble, predict, export, a
teacher, --init-from) loads it here.

    trained = load_trained("runs/b0")          # Trained(model, class_names, data_config, config, source)
    trained.model(images)                      # logits (N, classes) of a normalised batch
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..base.config import TrainConfig, config_from_dict, validate
from ..base.devices import get_device, to_model_input
from ..base.errors import UserError
from ..base.mps_check import device_code
from ..data import augment
from ..data.loaders import sample_batch
from ..training import checkpoint
from ..training.distill import Teacher, kd_loss
from ..training.models import create_model
from ..training.recipe import make_criterion
from ..training.run_folder import check_run_weights
from ..training.trained import Trained, from_state
from .features import embed

_logger = logging.getLogger(__name__)


def load_trained(path: str | Path, *, use_ema: bool = False, device: torch.device | str = "cpu") -> Trained:
    """Rebuild a model from a run folder (its best checkpoint) or a checkpoint file, in eval mode. A probe run
    (`helpers.use.probe`) gives its frozen backbones with the linear head.

    Raises:
        UserError: no readable checkpoint, or one that is not its run's own (`run_folder.check_run_weights`).
    """
    state = load_checked(path)
    if "probe" in state:
        if use_ema:
            raise UserError(f"{path} is a linear probe: it has no EMA weights. Drop --use-ema.")
        return load_probe(state, str(path), device)
    return from_state(state, str(path), use_ema=use_ema, device=device)


def load_checked(path: str | Path) -> dict:
    """A run's checkpoint (a run folder gives its best.pt), checked to be the weights its run wrote."""
    file = checkpoint.resolve(path, checkpoint.BEST)
    state = checkpoint.load(file)
    check_run_weights(file, state)
    return state


def init_state(path: str | Path, backbone: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The weights `--init-from` starts a `backbone` from: a trained run's, or a probe run's backbone weights with
    its head folded in (`probe_init_state`), and the class names of the head's rows."""
    state = load_checked(path)
    if "probe" in state:
        return probe_init_state(state, backbone, str(path)), list(state["class_names"])
    if config_from_dict(state["config"]).backbone != backbone:
        raise UserError(f"--init-from {path} is a {state['config']['backbone']} checkpoint, not {backbone}.")
    return state["model"], list(state["class_names"])


def load_teachers(paths: Sequence[str | Path], device: torch.device | str = "cpu") -> list[Trained]:
    """The runs of `--teacher`, in its order (fine-tuned or probe runs)."""
    return [load_trained(p, device=device) for p in paths]


def train(cfg: TrainConfig) -> dict:
    """`helpers.train`: `fit(cfg)` with the runs that `cfg` names loaded here (the teachers of `--teacher`, the
    weights of `--init-from`), so the training loop never loads a trained model itself. Returns the summary."""
    from ..training.engine import fit

    cfg = validate(cfg)
    return fit(cfg, teachers=load_teachers(cfg.teacher), init=init_loader(cfg))


def init_loader(cfg: TrainConfig) -> Callable[[], tuple[dict[str, torch.Tensor], list[str]]] | None:
    """What `fit` (or the finder) calls for the weights of `--init-from`, only when a run starts from them (None:
    no --init-from)."""
    if not cfg.init_from:
        return None
    path, backbone = cfg.init_from, cfg.backbone
    return lambda: init_state(path, backbone)


# ----------------------------------------------------------------------------------------------------------------
# The probe as a model


class ProbeModel(nn.Module):
    """Frozen backbones, each feature L2-normalised, concatenated, and the probe's linear head.

    `evaluate` and `ensemble` run each backbone on its own preprocessing, exactly that of the cached features
    (`probe_tta_probs`). Called as a plain model (a distillation teacher), the input is a batch prepared with
    `canvas_config` (one member's preprocessing) and each other member gets it converted to its own:
    un-normalised, centre-cropped to its crop fraction, resized (bicubic, antialiased) and normalised with its
    mean and std, a close approximation of its own preprocessing.
    """

    is_probe = True  # `helpers.use.inference.tta_probs` hands probes to `probe_tta_probs`

    def __init__(self, backbones: list[nn.Module], members: list[dict], canvas: dict, head: nn.Linear):
        super().__init__()
        self.backbones = nn.ModuleList(backbones)
        self.members = members
        self.canvas = canvas
        self.head = head

    def _member_input(self, x: torch.Tensor, d: dict) -> torch.Tensor:
        c = self.canvas
        if (d["image_size"], d["crop_pct"], tuple(d["mean"]), tuple(d["std"])) == (
                c["image_size"], c["crop_pct"], tuple(c["mean"]), tuple(c["std"])):
            return x
        cm, cs, dm, ds = (torch.tensor(v, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
                          for v in (c["mean"], c["std"], d["mean"], d["std"]))
        x = x * cs + cm
        keep = min(1.0, d["crop_pct"] / c["crop_pct"])
        side = x.shape[-1]
        crop = max(1, round(side * keep))
        top = (side - crop) // 2
        x = x[..., top:top + crop, top:top + crop]
        x = F.interpolate(x, size=(d["image_size"], d["image_size"]), mode="bicubic", antialias=True,
                          align_corners=False)
        return (x - dm) / ds

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The concatenated, per-backbone L2-normalised features (N, sum D) that the head reads."""
        parts = [F.normalize(embed(m, self._member_input(x, d["data_config"]), d["views"]), dim=1)
                 for m, d in zip(self.backbones, self.members)]
        return torch.cat(parts, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).to(self.head.weight.dtype))


def load_probe(state: dict, source: str, device: torch.device | str = "cpu"):
    """A `helpers.training.trained.Trained` from a probe checkpoint: the backbones built from their pretrained
    sources (hub, offline or a file, as the features were computed; random weights from the checkpoint itself)
    and the linear head.

    Raises:
        UserError: a backbone's weights are not those its features were computed with (`member_model`).
    """
    probe = state["probe"]
    stored = probe.get("backbone_weights") or [None] * len(probe["members"])
    backbones = [member_model(m, w, 0, source).eval() for m, w in zip(probe["members"], stored)]
    weight, bias = state["model"]["weight"], state["model"]["bias"]
    head = nn.Linear(weight.shape[1], weight.shape[0])
    head.load_state_dict({"weight": weight, "bias": bias})
    model = ProbeModel(backbones, probe["members"], dict(state["data_config"]), head)
    model.to(device).eval()
    return Trained(model, list(state["class_names"]), dict(state["data_config"]), state["config"], str(source))


def member_model(member: dict, stored: dict[str, torch.Tensor] | None, num_classes: int, source: str, *,
                 check: bool = True) -> nn.Module:
    """One backbone of a probe with a `num_classes` head (0: none), with the weights its features were
    computed with: built from its pretrained source, or from `stored` (random weights), and checked against
    the member's SHA-256 when it has one (probe runs written before it was recorded are not checked).

    Raises:
        UserError: random weights that were not stored, or weights that changed since (a replaced file).
    """
    from ..training.models import weights_digest

    if member["pretrained"] == "none" and stored is None:
        raise UserError(f"{source} is a probe over features of a {member['backbone']} with random weights "
                        "(--pretrained none) that it does not hold: its numbers cannot be reproduced. Fit the probe "
                        "again with this version (it stores such weights), or use pretrained features.")
    model = create_model(member["backbone"], num_classes, pretrained=member["pretrained"],
                         image_size=member["data_config"]["image_size"])
    if stored is not None:
        own = model.state_dict()
        model.load_state_dict({**own, **{k: v for k, v in stored.items() if k in own}})
    expected = member.get("weights_sha256")
    if not check:
        return model
    if expected is None:
        _logger.warning("%s was fitted before probes recorded their backbone's weights: %s (%s) is not checked.",
                        source, member["backbone"], member["pretrained"])
        return model
    actual = weights_digest(model)
    if actual != expected:
        raise UserError(
            f"The backbone {member['backbone']} of {source}, built from --pretrained {member['pretrained']}, now has "
            f"other weights than its features were computed with (SHA-256 {actual[:12]}... against {expected[:12]}...): "
            "the weights file was replaced or changed (or the hub's weights did). Restore those weights, or compute "
            "the features again and fit a new probe.")
    return model


def probe_init_state(state: dict, backbone: str, source: str) -> dict[str, torch.Tensor]:
    """The weights `--init-from PROBE_RUN` starts a fine-tune from (LP-FT): the backbone's weights the probe's
    features were computed with (checked like `load_probe`) and the probe's head folded into the model's plain
    linear classifier.

    The probe reads L2-normalised features, logits = W f / |f| + b, which a linear classifier cannot express
    exactly. The head is folded with the mean train-feature norm m instead: logits = (W / m) f + b, which is
    the probe's W f / |f| scaled by |f| / m > 0, plus the same bias. Without the bias every prediction would be
    the probe's; with it, a photo whose two best classes are close can flip where |f| / m is far from 1 (3 of
    the 150 test photos of the tiny set at 64 px, `tests/test_probe.py` measures it). So the fine-tune starts
    from about the probe's predictions, not exactly from them. A normalising head would keep the logits
    exactly, but it would be a module of its own that every other command (evaluate, ensemble, export) would
    need to know; the folded head is a plain timm model.

    Raises:
        UserError: the probe has several backbones, another backbone than the fine-tune, or weights that
            changed since its features were computed.
    """
    members = state["probe"]["members"]
    if len(members) != 1 or members[0]["backbone"] != backbone:
        names = " + ".join(m["backbone"] for m in members)
        raise UserError(f"--init-from {source} is a probe on {names}; a fine-tune of {backbone} can start from the "
                        f"probe of {backbone} alone. Fit one with `python -m helpers probe --features DIR` on "
                        f"features of {backbone}.")
    member = members[0]
    n_classes = state["model"]["weight"].shape[0]
    stored = (state["probe"].get("backbone_weights") or [None])[0]
    model = member_model(member, stored, n_classes, source)
    base = model.state_dict()
    classifier = _classifier_name(model)
    base[f"{classifier}.weight"] = state["model"]["weight"] / member["mean_norm"]
    base[f"{classifier}.bias"] = state["model"]["bias"].clone()
    _logger.info("Starting from the probe %s: %s weights (%s) and the probe's head (folded with mean feature norm "
                 "%.2f)", source, backbone, member["pretrained"], member["mean_norm"])
    return base


def _classifier_name(model: nn.Module) -> str:
    head = model.get_classifier()
    name = next((n for n, m in model.named_modules() if m is head), None)
    if name is None or not isinstance(head, nn.Linear):
        raise UserError(f"{type(model).__name__} has no plain linear classifier to start from a probe's head.")
    return name


@device_code
def distillation_terms(cfg: TrainConfig, student: str | Path, n: int = 16) -> dict[str, float]:
    """The distillation loss's two terms on one training batch of `cfg`'s data, for a trained `student` run,
    with the trainer's own pieces: `Teacher` (each member at its own size and normalisation), the criterion and
    `kd_loss` (without mixing, so the labels are the photos' own).

    Returns:
        {"hard: CE on the labels", "soft: T^2 KL(teacher || student)", "loss = a soft + (1 - a) hard"}
    """
    device = get_device(cfg.device)
    trained = load_trained(student, device=device)
    images, labels, _ = sample_batch(cfg, n)
    normalize = augment.DeviceNormalize(trained.data_config["mean"], trained.data_config["std"])
    x = to_model_input(images, device, normalize, torch.contiguous_format)
    teacher = Teacher(load_teachers(cfg.teacher, device), trained.data_config)
    with torch.no_grad():
        logits, teacher_logits = trained.model(x), teacher(x)
        hard = make_criterion(False, cfg.label_smoothing)(logits, labels.to(device))
        soft = kd_loss(logits, teacher_logits, hard, alpha=1.0, temperature=cfg.kd_temperature)
        total = kd_loss(logits, teacher_logits, hard, alpha=cfg.kd_alpha, temperature=cfg.kd_temperature)
    return {"hard: CE on the labels": float(hard), "soft: T^2 KL(teacher || student)": float(soft),
            f"loss = {cfg.kd_alpha:g} soft + {1 - cfg.kd_alpha:g} hard": float(total)}
