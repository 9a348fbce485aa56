"""Distillation losses for QAT of binarized attention.

  - ``hard_kd``: BinaryAttention's DeiT-style loss, ``w·CE(student, labels) +
    (1−w)·CE(student, argmax teacher)`` (w = 0.5 by default);
  - ``soft_kd``: temperature-scaled KL(teacher ‖ student) on logits (Hinton), optionally mixed
    with the label CE;
  - ``attention_kl``: KL(teacher attention ‖ student attention) per query row, averaged — HAD's
    attention-map term; zero student probabilities (top-N) are clamped, not −inf;
  - ``embedding_loss``: 1 − cosine + MSE between student and teacher embeddings / hidden states
    (pure distillation on unlabeled data).

What it does not: pick which losses apply (``recipes`` does) or read model internals.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

EPS = 1e-8


def hard_kd(student_logits: torch.Tensor, teacher_logits: Optional[torch.Tensor],
            labels: Optional[torch.Tensor], label_weight: float = 0.5) -> torch.Tensor:
    """``w·CE(labels) + (1−w)·CE(argmax teacher)``; just the available term if one is None."""
    terms, weights = [], []
    if labels is not None:
        terms.append(F.cross_entropy(student_logits, labels))
        weights.append(label_weight if teacher_logits is not None else 1.0)
    if teacher_logits is not None:
        terms.append(F.cross_entropy(student_logits, teacher_logits.argmax(-1)))
        weights.append(1.0 - label_weight if labels is not None else 1.0)
    return sum(w * t for w, t in zip(weights, terms))


def soft_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            labels: Optional[torch.Tensor] = None, temperature: float = 1.0,
            label_weight: float = 0.5) -> torch.Tensor:
    """KL(softmax(t/τ) ‖ softmax(s/τ))·τ², mixed ``w : 1−w`` with CE(labels) when given."""
    log_s = F.log_softmax(student_logits / temperature, -1)
    log_t = F.log_softmax(teacher_logits.detach() / temperature, -1)
    kl = F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * temperature ** 2
    if labels is None:
        return kl
    return label_weight * F.cross_entropy(student_logits, labels) + (1 - label_weight) * kl


def attention_kl(student_probs: Sequence[torch.Tensor],
                 teacher_probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over sites of KL(teacher ‖ student) per attention row (summed over keys).

    Rows that are entirely masked (all-zero teacher probabilities) contribute zero. Computed
    in float32 whatever the maps' dtype (maps recorded under autocast are bfloat16/float16).
    """
    if len(student_probs) != len(teacher_probs) or not student_probs:
        raise ValueError(f"attention_kl needs one teacher map per student map, got "
                         f"{len(student_probs)} and {len(teacher_probs)}")
    total = 0.0
    for s, t in zip(student_probs, teacher_probs):
        s, t = s.float(), t.detach().float()
        kl = (t * (torch.log(t.clamp_min(EPS)) - torch.log(s.clamp_min(EPS)))).sum(-1)
        total = total + kl.mean()
    return total / len(student_probs)


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor,
                   mse_weight: float = 1.0) -> torch.Tensor:
    """``1 − cos(student, teacher)`` (mean over rows) ``+ mse_weight·MSE`` on the last dim."""
    teacher = teacher.detach().to(student.dtype)
    cos = F.cosine_similarity(student.flatten(0, -2), teacher.flatten(0, -2), dim=-1).mean()
    return (1 - cos) + mse_weight * F.mse_loss(student, teacher)
