"""``BinarizeConfig``: every option of the binarize pass, with checks that name the bad option.

What it does: holds the op options each rewritten site starts with (scale mode, binarizer,
top-N, 8-bit P/V) and the learned-bias choice (kind, token grid, prefix tokens, fallback).
What it does not: find or rewrite anything (``matchers``, ``rewrite``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from ..ops.reference import BINARIZERS, SCALE_MODES

BIAS_KINDS = ("relpos", "dense", "head", None)
SITE_MODES = ("binary", "float")


@dataclass
class BinarizeConfig:
    """Options of :func:`binattn.binarize`.

    Attributes:
        bias: learned bias added to the binary scores: ``"relpos"`` (BEiT relative-position table
            per head over a Gh×Gw grid plus prefix tokens), ``"dense"`` ([H, Nq, Nk]), ``"head"``
            (one scalar per head) or None.
        grid: (Gh, Gw) token grid for ``"relpos"``; inferred where the model makes it clear.
        num_prefix_tokens: cls/register tokens before the grid; inferred with the grid.
        bias_fallback: what a site gets when ``"relpos"`` cannot be inferred for it
            (``"dense"``, ``"head"`` or None); the report says so.
        scale_mode, q_scale/k_scale (static mode), top_n, pv_bits, binarizer, temperature,
        ste_clip: the options of :func:`binattn.ops.binary_attention` every site starts with.
        mode: ``"binary"`` or ``"float"`` (exact full-precision attention at each site).
        dynamic_batch: export with a symbolic batch dim where the model allows it.
        seed: seeds the relpos tables' trunc-normal init (per site), so binarizing the same
            model twice gives the same parameters.
    """

    bias: Optional[str] = None
    grid: Optional[tuple[int, int]] = None
    num_prefix_tokens: Optional[int] = None
    bias_fallback: Optional[str] = "head"
    scale_mode: str = "mean_abs"
    top_n: Optional[int] = None
    pv_bits: Optional[int] = None
    binarizer: str = "sign"
    temperature: float = 1.0
    ste_clip: float = 1.0
    mode: str = "binary"
    dynamic_batch: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.bias not in BIAS_KINDS:
            raise ValueError(f"bias must be one of {BIAS_KINDS}, got {self.bias!r}")
        if self.bias_fallback not in ("dense", "head", None):
            raise ValueError(f"bias_fallback must be 'dense', 'head' or None, got "
                             f"{self.bias_fallback!r}")
        if self.grid is not None:
            if len(tuple(self.grid)) != 2 or min(self.grid) < 1:
                raise ValueError(f"grid must be two positive ints (Gh, Gw), got {self.grid!r}")
            self.grid = (int(self.grid[0]), int(self.grid[1]))
        if self.num_prefix_tokens is not None and self.num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens must be >= 0, got {self.num_prefix_tokens}")
        if self.scale_mode not in SCALE_MODES:
            raise ValueError(f"scale_mode must be one of {SCALE_MODES}, got {self.scale_mode!r}")
        if self.binarizer not in BINARIZERS:
            raise ValueError(f"binarizer must be one of {BINARIZERS}, got {self.binarizer!r}")
        if self.top_n is not None and (not isinstance(self.top_n, int) or self.top_n < 1):
            raise ValueError(f"top_n must be a positive int or None, got {self.top_n!r}")
        if self.pv_bits not in (None, 8):
            raise ValueError(f"pv_bits must be None or 8, got {self.pv_bits!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if self.mode not in SITE_MODES:
            raise ValueError(f"mode must be one of {SITE_MODES}, got {self.mode!r}")

    def site_options(self) -> dict:
        """The per-site op options (plain attributes of every BinaryAttentionSite)."""
        keys = ("scale_mode", "top_n", "pv_bits", "binarizer", "temperature", "ste_clip", "mode")
        return {k: getattr(self, k) for k in keys}

    def to_dict(self) -> dict:
        return asdict(self)
