"""Schedule templates' named knobs for binattn's CPU kernels, their defaults and search spaces.

What it does: one frozen dataclass per kernel template (``ScoreKnobs`` for the popcount score
kernel, ``AttentionKnobs`` for the fused attention kernels), a default tuned for generic
x86-64 (AVX2 or AVX-512, 2+ cores), the candidate grid that ``binattn tune`` searches, and a
stable text form (``key()``) used in cache keys and the tuning database.

What it does not: build kernels (``binattn.tvm_kernels.cpu.kernels``) or time them
(``binattn.tvm_kernels.cpu.tune``).
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class ScoreKnobs:
    """Register tile of the score kernel: tile_m query rows × tile_n keys (vectorized)."""

    tile_m: int = 4
    tile_n: int = 16

    def key(self) -> str:
        return f"m{self.tile_m}n{self.tile_n}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AttentionKnobs:
    """Tiling of the fused attention kernel.

    block_q: query rows per parallel task; block_k: keys per tile (the online-softmax step);
    rows: query rows of the P·V register tile (unrolled); acc_cols: value columns per register
    buffer (vectorized); vector: lanes of the score/softmax loops.
    """

    block_q: int = 32
    block_k: int = 128
    rows: int = 4
    acc_cols: int = 32
    vector: int = 16

    def check(self) -> None:
        """Raise ValueError when the knobs cannot tile a workload (any Dv: the P·V register
        buffers are ``acc_cols`` wide, the last one takes the rest)."""
        problems = []
        if self.block_q % self.rows:
            problems.append(f"block_q={self.block_q} is not a multiple of rows={self.rows}")
        if self.block_k % self.vector or self.block_k % 4:
            problems.append(f"block_k={self.block_k} is not a multiple of vector={self.vector}")
        if self.rows * self.acc_cols * 4 >= 1024:
            problems.append("rows*acc_cols*4 bytes must stay under 1 KiB (register tile)")
        if problems:
            raise ValueError("; ".join(problems))

    def key(self) -> str:
        return f"q{self.block_q}k{self.block_k}r{self.rows}c{self.acc_cols}v{self.vector}"

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_SCORE = ScoreKnobs()
DEFAULT_ATTENTION = AttentionKnobs()
TILE_REGISTERS = 24   # of AVX-512's 32 vector registers, what the P·V accumulators may hold


def default_attention(value_dim: int) -> AttentionKnobs:
    """The untuned knobs for a value dim: ``DEFAULT_ATTENTION`` with as many register-tile
    rows (4, 2 or 1) as keep ``rows × ⌈Dv/16⌉`` accumulator vectors within
    ``TILE_REGISTERS``, so the tile does not spill (one thread: Dv = 128 at 2 rows runs
    1.6 / 4.7 ms where 4 rows ran 1.9 / 5.6 ms at (1, 4, 288 / 544, 128); Dv ≤ 64 and 72
    keep 4 rows, their fastest)."""
    vectors = -(-value_dim // 16)
    rows = next((r for r in (4, 2) if r * vectors <= TILE_REGISTERS), 1)
    return DEFAULT_ATTENTION if rows == DEFAULT_ATTENTION.rows else replace(
        DEFAULT_ATTENTION, rows=rows)


def score_space() -> list[ScoreKnobs]:
    """Candidates searched by ``binattn tune`` for the score kernel."""
    return [ScoreKnobs(m, n) for m, n in itertools.product((2, 4, 8), (8, 16, 32))]


def attention_space() -> list[AttentionKnobs]:
    """Candidates searched by ``binattn tune`` for the attention kernels (valid ones only)."""
    out = []
    for bq, bk, rows, cols in itertools.product((16, 32, 64), (64, 128, 256), (2, 4, 6),
                                                (16, 32)):
        knobs = AttentionKnobs(bq, bk, rows, cols)
        try:
            knobs.check()
        except ValueError:
            continue
        out.append(knobs)
    return out
