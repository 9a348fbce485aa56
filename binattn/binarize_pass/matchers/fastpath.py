"""Matcher for torch's fused inference fast paths, which hide their attention inside one op.

``nn.TransformerEncoderLayer`` and ``nn.MultiheadAttention`` run
``aten._transformer_encoder_layer_fwd`` / ``aten._native_multi_head_attention`` when called
under ``torch.no_grad()`` outside export (what torch.compile sees). The attention inside cannot
be rewritten from outside, so such a site is always reported as skipped, with the remedy.
What it does not: rewrite (``binattn.binarize`` exports these modules on their regular path).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import fx

from .base import Match, hint, meta_val

aten = torch.ops.aten

NAME = "torch-fastpath"
TARGETS = {aten._transformer_encoder_layer_fwd.default: (1, 2),
           aten._native_multi_head_attention.default: (3, 4)}
REASON = ("torch's fused fast path (nn.TransformerEncoderLayer / nn.MultiheadAttention under "
          "no_grad) hides the attention; use binattn.binarize (export takes the regular path)")


def match(node: fx.Node, gm: Optional[fx.GraphModule]) -> Optional[Match]:
    if node.op != "call_function" or node.target not in TARGETS:
        return None
    src = node.args[0]
    dim_arg, heads_arg = TARGETS[node.target]
    val = meta_val(src)
    m = Match(NAME, anchor=node, output=node, q=src, k=src, v=src, skip=REASON)
    if val is not None and val.dim() == 3:
        heads, dim = int(node.args[heads_arg]), int(node.args[dim_arg])
        b, n = hint(val.shape[0]), hint(val.shape[1])
        m.shape = {"B": b, "Hq": heads, "Hkv": heads, "Nq": n, "Nk": n, "D": dim // heads,
                   "Dv": dim // heads}
    return m
