"""Knobs of the CPU backward kernel (``binattn.tvm_kernels.cpu.backward``) and their default.

What it does: one frozen dataclass, ``BackwardKnobs`` (query rows per block, keys per tile, the
register tile of the three small matrix products), its check against a workload's padded head
dims, and a stable text form for cache keys. What it does not: build or time kernels, or search
a space (the backward has no tuner yet; the default was timed on a 2-core AVX-512 EPYC).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

#: head dims (D and Dv) are padded to a multiple of this (one AVX-512 float vector)
DIM_BUCKET = 16


@dataclass(frozen=True)
class BackwardKnobs:
    """Tiling of the backward kernel.

    block_q: query rows per block (a task walks its (b, h)'s query blocks); block_k: keys per
    tile; rows: rows of a product's register tile (unrolled); cols: columns per register tile
    (vectorized; at most 32 so a tile stays under TVM's 1 KiB stack-allocation limit);
    vector: lanes of the score / softmax loops.
    """

    block_q: int = 64
    block_k: int = 64
    rows: int = 4
    cols: int = 32
    vector: int = 16

    def check(self, head_dim: int, value_dim: int) -> None:
        """Raise ValueError when the knobs cannot tile the padded head dims."""
        problems = []
        if self.block_q % self.rows or self.block_k % self.rows:
            problems.append(f"block_q and block_k must be multiples of rows={self.rows}")
        if self.block_k % self.vector or self.block_k % self.cols:
            problems.append(f"block_k={self.block_k} must be a multiple of vector and cols")
        if self.rows * self.cols * 4 >= 1024:
            problems.append("rows*cols*4 bytes must stay under 1 KiB (register tile)")
        for name, dim in (("head dim", head_dim), ("value dim", value_dim)):
            if dim % DIM_BUCKET:
                problems.append(f"{name} {dim} is not padded to {DIM_BUCKET}")
        if problems:
            raise ValueError("; ".join(problems))

    def key(self) -> str:
        return (f"q{self.block_q}k{self.block_k}r{self.rows}c{self.cols}"
                f"v{self.vector}")

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_BACKWARD = BackwardKnobs()


def tile_cols(dim: int, knobs: BackwardKnobs = DEFAULT_BACKWARD) -> int:
    """Columns of a register tile over a padded head dim: ``knobs.cols`` or the largest power
    of two ≥ 16 dividing ``dim``."""
    cols = knobs.cols
    while dim % cols:
        cols //= 2
    return cols
