"""Cluttered-digits benchmark: the digits table on a task where attention has to find the digit.

Each of the 1797 real digits sits at a random position of a 24×24 canvas over fragments of other
digits (``binattn.train.data.cluttered_digits``); the ViT uses patch 2 → a 12×12 token grid + cls
(N = 145). Same protocol, variants, table and plots as ``train_digits.py`` (whose options it
takes); top-N is HAD's default 30 here.

    python benchmarks/train_cluttered.py --quick
    python benchmarks/train_cluttered.py --workers 10
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_digits import CLUTTERED, main  # noqa: E402

if __name__ == "__main__":
    sys.exit(0 if main(setup=CLUTTERED) else 1)
