"""Cluttered-digits benchmark: the digits table on a task where attention has to find the digit.

Each of the 1797 real digits sits at a random position of a 24×24 canvas over fragments of other
digits (``binattn.train.data.cluttered_digits``); per fold the training digits are rendered 32
times (fresh positions and clutter), the test digits once. The ViT has a small conv stem (two 3×3
convs) before its patch-2 embedding → a 12×12 token grid + cls (N = 145). Same protocol,
variants, table and plots as ``train_digits.py`` (whose options it takes; setup ``CLUTTERED``
there); top-N is HAD's default 30 here. Sized for a GPU: batch 256, FP 5 epochs of the
renderings, fine-tunes 1.

    python benchmarks/train_cluttered.py --quick --device cuda
    python benchmarks/train_cluttered.py --workers 12 --device cuda \
        --variants fp binary sign scale bias distill had had_topn     # ~7 min on one H100
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_digits import CLUTTERED, main  # noqa: E402

if __name__ == "__main__":
    sys.exit(0 if main(setup=CLUTTERED) else 1)
