"""Step schedules: learning rate (linear warm-up + cosine) and HAD's staged binarizer.

HAD trains in four stages (Hamming Attention Distillation, arXiv 2502.01770):
  1. ``scaled_tanh`` — T·tanh(x/T), T decaying 5 → 1 (starts near the identity, i.e. near FP);
  2. ``tanh`` — tanh(x/T) with T decaying 1 → 0.05 (approaches sign);
  3. ``sign`` with a straight-through gradient clipped at 2;
  4. ``sign`` again, fine-tuned without the attention-map loss.
Temperatures decay geometrically (log-linear) inside a stage. Stage lengths are fractions of the
run (default 0.25 / 0.25 / 0.3 / 0.2).

What it does not: apply anything to a model (``recipes`` sets the site attributes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

HAD_FRACTIONS = (0.25, 0.25, 0.3, 0.2)


@dataclass(frozen=True)
class HADStage:
    """The binarizer settings HAD uses at one step."""

    stage: int              # 1..4
    binarizer: str          # "scaled_tanh" | "tanh" | "sign"
    temperature: float
    ste_clip: float
    attention_loss: bool    # False in the final stage


def _geometric(start: float, end: float, frac: float) -> float:
    if frac <= 0:
        return start
    if frac >= 1:
        return end
    return math.exp(math.log(start) + (math.log(end) - math.log(start)) * frac)


def stage_bounds(total_steps: int, fractions: Sequence[float] = HAD_FRACTIONS) -> list[int]:
    """First step of each stage and the end: ``[0, e1, e2, e3, total]`` (cumulative, rounded)."""
    if len(fractions) != 4 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"HAD stage fractions must be 4 non-negative numbers, got {fractions}")
    total = sum(fractions)
    bounds, acc = [0], 0.0
    for f in fractions:
        acc += f / total
        bounds.append(round(acc * total_steps))
    return bounds


def had_stage(step: int, total_steps: int, fractions: Sequence[float] = HAD_FRACTIONS,
              tanh_start: float = 5.0, tanh_mid: float = 1.0, tanh_end: float = 0.05,
              ste_clip: float = 2.0) -> HADStage:
    """HAD's binarizer settings at ``step`` (0-based) of ``total_steps``."""
    bounds = stage_bounds(total_steps, fractions)
    if step < bounds[1]:
        frac = step / max(bounds[1] - 1, 1)
        return HADStage(1, "scaled_tanh", _geometric(tanh_start, tanh_mid, frac), ste_clip, True)
    if step < bounds[2]:
        frac = (step - bounds[1]) / max(bounds[2] - bounds[1] - 1, 1)
        return HADStage(2, "tanh", _geometric(tanh_mid, tanh_end, frac), ste_clip, True)
    if step < bounds[3]:
        return HADStage(3, "sign", 1.0, ste_clip, True)
    return HADStage(4, "sign", 1.0, ste_clip, False)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int,
                  min_ratio: float = 0.01) -> float:
    """LR multiplier: linear warm-up from ~0 to 1, then cosine down to ``min_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
