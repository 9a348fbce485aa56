"""Attention sites to cost: from a binarized GraphModule (``find_sites``) or a bare shape.

What it does: turn each ``BinaryAttentionSite`` (its ``shape`` dict B/Hq/Hkv/Nq/Nk/D/Dv, its
``top_n`` and ``pv_bits``) into a ``SiteSpec``; build the one-site spec of
``--attention SEQ,D,HEADS[,TOPK]``. What it does not: load or binarize models (the CLI does,
through ``binattn.model_io`` and ``binattn.binarize``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .cost_model import AttentionShape
from .hardware import HardwareConfigError


@dataclass(frozen=True)
class SiteSpec:
    """One attention site: where it is, its shape and the precisions it uses."""

    index: int
    layer: str
    matcher: str
    shape: AttentionShape
    pv_bits: Optional[int] = None
    binarizer: str = "sign"


def parse_attention(spec: str) -> AttentionShape:
    """``"SEQ,D,HEADS[,TOPK]"`` → a validated square self-attention shape."""
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) not in (3, 4) or not all(p.isdigit() for p in parts):
        raise HardwareConfigError(
            f"--attention wants SEQ,D,HEADS[,TOPK] as positive integers, got {spec!r}")
    seq, dim, heads, *top = (int(p) for p in parts)
    if min(seq, dim, heads, *top) < 1:
        raise HardwareConfigError(f"--attention SEQ,D,HEADS[,TOPK] must all be >= 1, got {spec!r}")
    return AttentionShape.square(seq, dim, heads, top[0] if top else None)


def attention_site(shape: AttentionShape) -> SiteSpec:
    """The single site costed by ``--attention``."""
    return SiteSpec(0, "attention", "--attention", shape)


def sites_from_graph(gm, top_k: Optional[int] = None) -> list[SiteSpec]:
    """Specs of every rewritten site of a binarized GraphModule, in graph order.

    ``top_k`` overrides each site's ``top_n`` (to cost "as if" trained with HAD's top-N).
    """
    from ..binarize_pass import find_sites  # the pass is only needed on this path

    specs = []
    for site in find_sites(gm):
        s = site.shape
        n_keys = int(s["Nk"])
        k = top_k if top_k is not None else site.top_n
        if k is not None and k >= n_keys:
            k = None                      # keeps every key: the op does the same
        shape = AttentionShape(int(s["B"]), int(s["Hq"]), int(s["Hkv"]), int(s["Nq"]), n_keys,
                               int(s["D"]), int(s.get("Dv", s["D"])), k).validate()
        specs.append(SiteSpec(int(site.index), str(site.module_path), str(site.matcher), shape,
                              site.pv_bits, str(site.binarizer)))
    return specs
