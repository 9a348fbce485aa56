"""A one-minute end-to-end training run on real data (the demo's training step).

``digits_quickstart()``: trains a small FP digits ViT on 80 % of scikit-learn's digits, binarizes
its attention with ``binattn.binarize`` (relpos bias), measures the swap without training, then
trains the binarized model for a few dozen steps with the BinaryAttention recipe against its own
FP copy and measures again on the held-out 20 %. Returns the numbers and the loss curve.

What it does not: the cross-validated study (``benchmarks/train_digits.py``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ..models import digits_vit
from . import data
from .trainer import evaluate, train


@dataclass
class QuickstartResult:
    fp_accuracy: float
    swap_accuracy: float
    trained_accuracy: float
    losses: list[float]
    steps: int
    seconds: float


def digits_quickstart(fp_steps: int = 300, qat_steps: int = 60, seed: int = 0,
                      progress: bool = True) -> QuickstartResult:
    """FP train → binarize → QAT on the digits; accuracies on a held-out 20 %."""
    import time

    from ..binarize_pass import BinarizeConfig, binarize

    start = time.perf_counter()
    torch.manual_seed(seed)
    full = data.digits()
    train_idx, test_idx = data.stratified_folds(full.labels, 5, seed)[0]
    train_set, test_set = full.subset(train_idx), full.subset(test_idx)
    fp = digits_vit(dim=32, depth=2, heads=2)
    train(fp, train_set, recipe="fp", steps=fp_steps, lr=3e-3, batch_size=64, progress=progress)
    fp.eval()
    fp_acc = evaluate(fp, test_set, 128, "classification")["accuracy"]
    gm = binarize(copy.deepcopy(fp), fp.example_inputs(64), BinarizeConfig(bias="relpos"))
    swap_acc = evaluate(gm, test_set, 128, "classification")["accuracy"]
    result = train(gm, train_set, recipe="binaryattention", steps=qat_steps, lr=1e-3,
                   batch_size=64, warmup=0.1, progress=progress)
    trained_acc = evaluate(gm, test_set, 128, "classification")["accuracy"]
    return QuickstartResult(fp_acc, swap_acc, trained_acc, [h["loss"] for h in result.history],
                            qat_steps, time.perf_counter() - start)
