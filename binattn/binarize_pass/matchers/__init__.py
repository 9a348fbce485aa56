"""The matchers, one per attention shape, tried on every node in graph order.

- ``sdpa``: ``scaled_dot_product_attention`` and its backend variants (also what
  ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` become with ``need_weights=False``);
- ``decomposed``: hand-written ``softmax(q·kᵀ·scale + mask)·v`` in matmul/bmm/baddbmm form
  (timm/HF eager paths, GPT-2, ``nn.MultiheadAttention`` with weights), assembled from the
  forms of ``forms`` — each piece written as the PyTorch it matches, traced into an Inductor
  pattern by ``patterns``, with casts and views looked through by ``normalize``;
- ``fastpath``: torch's fused inference ops that hide an attention (always reported skipped);
- ``binattn_op``: ``torch.ops.binattn.binary_attention`` of an already binarized graph (a
  converted .pt2), turned back into a site with the same options.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import fx

from . import binattn_op, decomposed, fastpath, sdpa
from .base import Match, hint, meta_val, module_path

MatcherFn = Callable[[fx.Node, Optional[fx.GraphModule]], Optional[Match]]
MATCHERS: list[MatcherFn] = [sdpa.match, decomposed.match, fastpath.match, binattn_op.match]

__all__ = ["Match", "MATCHERS", "find_matches", "find_misses", "mask_problem", "hint",
           "meta_val", "module_path"]


def mask_problem(m: Match) -> Optional[str]:
    """Why a match's masks cannot go to the op (dtype, rank, broadcast), or None."""
    q, k = meta_val(m.q), meta_val(m.k)
    if q is None or k is None:
        return None
    n_k = k.shape[-1] if m.k_transposed else k.shape[-2]
    target = (*q.shape[:-1], n_k)
    for i, (node, _kind) in enumerate(m.mask_parts):
        val = meta_val(node)
        if val is None:
            return "mask of unknown shape"
        if not (val.dtype == torch.bool or val.is_floating_point()):
            return f"unsupported mask dtype {val.dtype} (bool or float only)"
        if i in m.mask_preps:   # brought to the scores' shape by the rewrite
            continue
        shape = "x".join(str(hint(s)) for s in val.shape)
        if val.dim() > len(target):
            return f"unsupported mask shape [{shape}] (rank above the scores')"
        try:
            ok = tuple(torch.broadcast_shapes(val.shape, target)) == tuple(target)
        except RuntimeError:
            ok = False
        if not ok:
            return f"unsupported mask shape [{shape}] (does not broadcast to the scores)"
    return None


def find_matches(gm: fx.GraphModule) -> list[Match]:
    """Every attention site of the graph, in graph order (masks checked)."""
    found = []
    for node in gm.graph.nodes:
        for matcher in MATCHERS:
            m = matcher(node, gm)
            if m is not None:
                m.skip = m.skip or mask_problem(m)
                found.append(m)
                break
    return found


def find_misses(gm: fx.GraphModule, matches: list[Match]) -> list[tuple[fx.Node, str]]:
    """Every softmax that no match claims, with why it is not attention (the node that broke
    the match and what was expected there), in graph order."""
    claimed = {node for m in matches for node in (m.anchor, *m.nodes)}
    misses = []
    for node in gm.graph.nodes:
        if node in claimed:
            continue
        reason = decomposed.miss_reason(node, gm)
        if reason is not None:
            misses.append((node, reason))
    return misses
