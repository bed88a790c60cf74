"""Knowledge distillation: the teacher (trained models, loaded by the caller: `helpers.use.runs.load_teachers`)
and the loss that mixes its softened outputs with the labels (Hinton et al. 2015)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .trained import Trained, check_classes


class Teacher(nn.Module):
    """One or more trained models as a distillation teacher. Each member gets the student's batch converted
    to its own normalisation and input size; several members return the log of their mean softmax.

    Args:
        members: the teacher's trained models (move the Teacher to the student's device with `.to`).
        student_data: the student's data config (input size, mean, std).
        class_names: the student's classes: each member's outputs are matched to them by name.
    """

    def __init__(self, members: Sequence[Trained], student_data: dict, class_names: list[str] | None = None):
        super().__init__()
        self.columns = [check_classes(m, class_names, "the training data", use="used as a teacher")  # each member,
                        if class_names is not None else None for m in members]  # its outputs in the student's order
        self.models = nn.ModuleList(m.model for m in members)
        self.data = [m.data_config for m in members]
        self.student = student_data
        self.class_names = members[0].class_names
        for p in self.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):
        return super().train(False)  # a teacher always predicts in eval mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = []
        for model, d, columns in zip(self.models, self.data, self.columns):
            xi = _convert_batch(x, self.student, d)
            logits = model(xi).float()
            logits = logits if columns is None else logits[:, columns.to(logits.device)]
            if len(self.models) == 1:
                return logits
            probs.append(logits.softmax(dim=1))
        return torch.stack(probs).mean(0).clamp_min(1e-8).log()


def _convert_batch(x: torch.Tensor, src: dict, dst: dict) -> torch.Tensor:
    if tuple(src["mean"]) != tuple(dst["mean"]) or tuple(src["std"]) != tuple(dst["std"]):
        s_mean, s_std, d_mean, d_std = (torch.tensor(v, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
                                        for v in (src["mean"], src["std"], dst["mean"], dst["std"]))
        x = (x * s_std + s_mean - d_mean) / d_std
    if x.shape[-1] != dst["image_size"]:
        x = F.interpolate(x, size=(dst["image_size"], dst["image_size"]), mode="bilinear", align_corners=False)
    return x


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, hard_loss: torch.Tensor, *, alpha: float,
            temperature: float) -> torch.Tensor:
    """Hinton et al. (2015) distillation: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * hard_loss.

    The KL term compares the temperature-softened distributions (softmax(logits / T)) of teacher and student,
    as the plan's `distillation_loss` does; T^2 keeps its gradient scale independent of T. The teacher is
    detached, so gradients flow only to the student.

    Args:
        student_logits, teacher_logits: (N, C).
        hard_loss: the student's ordinary loss on the labels (cross-entropy, or soft-target CE under mixup).
    """
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits.float() / t, dim=1), F.softmax(teacher_logits.detach().float() / t, dim=1),
                    reduction="batchmean")
    return alpha * t * t * soft + (1.0 - alpha) * hard_loss
