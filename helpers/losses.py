"""Losses beyond timm's: knowledge distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
