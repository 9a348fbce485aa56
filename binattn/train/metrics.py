"""Evaluation metrics: classification accuracy, embedding agreement, paired confidence intervals.

``embedding_agreement`` is how the MiniLM benchmark judges a binarized sentence encoder: the mean
cosine between FP and binarized embeddings of the same sentences, and the Spearman correlation
between the two models' pairwise-similarity matrices (does the binarized model rank sentence
pairs like the FP one?); ``register_agreement`` adds the worst row's cosine (one register of
held-out text). ``paired_interval`` gives the mean paired difference with a 95 %
Student-t interval (folds × seeds of a cross-validation).

What it does not: run models (``trainer.predict`` does).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose argmax equals the label."""
    return float((logits.argmax(-1) == labels).float().mean())


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share the mean rank), as float64."""
    from scipy.stats import rankdata

    return torch.from_numpy(rankdata(x.double().cpu().numpy())).double()


def embedding_agreement(student: torch.Tensor, teacher: torch.Tensor) -> dict[str, float]:
    """``mean_cosine`` of matching rows and ``spearman`` of the pairwise cosine similarities."""
    s = F.normalize(student.double(), dim=-1)
    t = F.normalize(teacher.double(), dim=-1)
    cos = float((s * t).sum(-1).mean())
    iu = torch.triu_indices(s.shape[0], s.shape[0], offset=1)
    sim_s, sim_t = (s @ s.T)[iu[0], iu[1]], (t @ t.T)[iu[0], iu[1]]
    rs, rt = _ranks(sim_s), _ranks(sim_t)
    rs, rt = rs - rs.mean(), rt - rt.mean()
    spearman = float((rs * rt).sum() / (rs.norm() * rt.norm()))
    return {"mean_cosine": cos, "spearman": spearman}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def paired_interval(values: Sequence[float], reference: Sequence[float],
                    confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``values − reference`` (paired) and its Student-t interval ``(mean, lo, hi)``."""
    from scipy.stats import t as student_t

    diff = np.asarray(values, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    mean = float(diff.mean())
    if diff.size < 2:
        return mean, math.nan, math.nan
    half = float(student_t.ppf(0.5 + confidence / 2, diff.size - 1) * diff.std(ddof=1)
                 / math.sqrt(diff.size))
    return mean, mean - half, mean + half


def register_agreement(student: torch.Tensor, teacher: torch.Tensor) -> dict[str, float]:
    """:func:`embedding_agreement` plus ``min_cosine`` (the worst row) and ``n`` (rows): the
    per-register report of the MiniLM benchmark."""
    cos = F.cosine_similarity(student.double(), teacher.double(), dim=-1)
    return {**embedding_agreement(student, teacher), "min_cosine": float(cos.min()),
            "n": int(student.shape[0])}
