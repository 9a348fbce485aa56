"""The attention matchers, one per attention shape, tried on every node in graph order.

- ``sdpa``: ``scaled_dot_product_attention`` and its backend variants (also what
  ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` become with ``need_weights=False``);
- ``decomposed``: hand-written ``softmax(q·kᵀ·scale + mask)·v`` in matmul/bmm/baddbmm form
  (timm/HF eager paths, GPT-2, ``nn.MultiheadAttention`` with weights);
- ``fastpath``: torch's fused inference ops that hide an attention (always reported skipped);
- ``binattn_op``: ``torch.ops.binattn.binary_attention`` of an already binarized graph (a
  converted .pt2), turned back into a site with the same options.
"""
from __future__ import annotations

from typing import Callable, Optional

from torch import fx

from . import binattn_op, decomposed, fastpath, sdpa
from .base import Match, hint, meta_val, module_path

MatcherFn = Callable[[fx.Node, Optional[fx.GraphModule]], Optional[Match]]
MATCHERS: list[MatcherFn] = [sdpa.match, decomposed.match, fastpath.match, binattn_op.match]

__all__ = ["Match", "MATCHERS", "find_matches", "hint", "meta_val", "module_path"]


def find_matches(gm: fx.GraphModule) -> list[Match]:
    """Every attention site of the graph, in graph order."""
    found = []
    for node in gm.graph.nodes:
        for matcher in MATCHERS:
            m = matcher(node, gm)
            if m is not None:
                found.append(m)
                break
    return found
