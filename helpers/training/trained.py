"""A trained model with what it needs to be used (its classes and preprocessing), and matching its classes to a
dataset's. The training wing rebuilds its own fine-tuned checkpoints here (the final test of `fit`); loading
any kind of run (probes, teachers, `--init-from`) is the use wing's (`helpers.use.runs`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from ..base.config import config_from_dict
from ..base.errors import UserError
from .models import create_model, skipped_init

_logger = logging.getLogger(__name__)


@dataclass
class Trained:
    """A trained model with what it needs to be used: its classes and its preprocessing."""

    model: nn.Module
    class_names: list[str]
    data_config: dict  # image_size, mean, std, crop_pct, interpolation
    config: dict
    source: str


def from_state(state: dict, source: str, *, use_ema: bool = False, device: torch.device | str = "cpu") -> Trained:
    """Rebuild a fine-tuned model from a loaded checkpoint of this project (`checkpoint.load`), in eval mode.

    Raises:
        UserError: `use_ema` for a run trained without --model-ema.
    """
    cfg = config_from_dict(state["config"])
    with skipped_init():  # every parameter comes from the checkpoint (strict load below)
        model = create_model(cfg.backbone, len(state["class_names"]), pretrained="none", image_size=cfg.image_size)
    weights = state["model"]
    if use_ema:
        if not state.get("model_ema"):
            raise UserError(f"{source} has no EMA weights: the run was trained without --model-ema.")
        weights = state["model_ema"]
    model.load_state_dict(weights)
    model.to(device).eval()
    return Trained(model, list(state["class_names"]), dict(state["data_config"]), state["config"], str(source))


def check_classes(trained: Trained, class_names: list[str], data_dir: str, use: str = "evaluated"
                  ) -> torch.Tensor | None:
    """Match a model's classes to a dataset's by name.

    Returns:
        None when they are the same list; else the model's output column of each dataset class (the same classes
        in another order), to reorder its outputs with `logits[:, columns]`.

    Raises:
        UserError: naming the classes one side has and the other lacks.
    """
    if list(trained.class_names) == list(class_names):
        return None
    own, other = set(trained.class_names), set(class_names)
    if own != other or len(own) != len(trained.class_names):
        only_model = sorted(own - other)
        only_data = sorted(other - own)
        parts = [f"only the model has {', '.join(only_model[:5])}" if only_model else "",
                 f"only the data has {', '.join(only_data[:5])}" if only_data else ""]
        raise UserError(
            f"{trained.source} was trained on {len(trained.class_names)} classes, but {data_dir} has "
            f"{len(class_names)}, and they differ by name ({'; '.join(p for p in parts if p)}). A model "
            f"{use} must have exactly the data's classes: use a model trained on these classes."
        )
    index = {c: i for i, c in enumerate(trained.class_names)}
    _logger.info("%s lists the classes of %s in another order: its outputs are matched by class name",
                 trained.source, data_dir)
    return torch.tensor([index[c] for c in class_names])
