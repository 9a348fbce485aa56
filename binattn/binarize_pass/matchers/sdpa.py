"""Matcher for ``scaled_dot_product_attention`` and its backend variants.

The export graph keeps ``aten.scaled_dot_product_attention``; aot_autograd graphs (torch.compile)
hold a backend op (``_scaled_dot_product_flash_attention_for_cpu``, ``_efficient_``, ``_flash_``,
``_cudnn_``, ``_math``) whose first output is the attention. ``attn_mask``, ``is_causal``,
``scale`` and GQA carry over exactly; active dropout is a skip.
What it does not: decomposed attention (``decomposed``).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import fx

from .base import Match, const_value, is_getitem, meta_val

aten = torch.ops.aten

NAME = "sdpa"


def _schema_args(node: fx.Node) -> dict[str, Any]:
    """Node args by schema name (defaults filled in)."""
    schema = node.target._schema
    out = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            out[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
    return out


def _variants() -> dict:
    """Target → (returns a tuple?, name of its mask argument)."""
    table = {"scaled_dot_product_attention": (False, "attn_mask"),
             "_scaled_dot_product_flash_attention_for_cpu": (True, "attn_mask"),
             "_scaled_dot_product_flash_attention": (True, None),
             "_scaled_dot_product_efficient_attention": (True, "attn_bias"),
             "_scaled_dot_product_cudnn_attention": (True, "attn_bias"),
             "_scaled_dot_product_attention_math": (True, "attn_mask")}
    return {getattr(aten, name).default: spec for name, spec in table.items()
            if hasattr(aten, name)}


VARIANTS = _variants()


def match(node: fx.Node, gm: Optional[fx.GraphModule]) -> Optional[Match]:
    if node.op != "call_function" or node.target not in VARIANTS:
        return None
    returns_tuple, mask_name = VARIANTS[node.target]
    args = _schema_args(node)
    q, k, v = args["query"], args["key"], args["value"]
    output, skip = node, None
    if returns_tuple:
        firsts = [u for u in node.users if is_getitem(u, 0)]
        others = [u for u in node.users if not is_getitem(u, 0)]
        if len(firsts) != 1:
            return None
        output = firsts[0]
        if others:
            skip = "the attention's logsumexp/weights are used (backward graph)"
    mask = args.get(mask_name) if mask_name else None
    m = Match(NAME, anchor=node, output=output, q=q, k=k, v=v,
              mask_parts=[(mask, "mask")] if mask is not None else [],
              is_causal=bool(args.get("is_causal", False)),
              scale=args.get("scale"), nodes=[node, output] if returns_tuple else [node])
    dropout = const_value(args.get("dropout_p", 0.0), gm)
    if dropout is None or dropout > 0:
        skip = skip or f"dropout_p={args.get('dropout_p')} is active (model in training mode)"
    m.skip = skip or _shape_skip(q, k, v, bool(args.get("enable_gqa", False)))
    return m


def _shape_skip(q: Any, k: Any, v: Any, enable_gqa: bool) -> Optional[str]:
    vals = [meta_val(x) for x in (q, k, v)]
    if any(x is None for x in vals):
        return "q/k/v shapes unknown"
    qv, kv, _ = vals
    if qv.dim() not in (3, 4):
        return f"rank-{qv.dim()} attention (only 3-D and 4-D are supported)"
    if qv.dim() == 4 and qv.shape[1] != kv.shape[1] and not enable_gqa:
        return "q and k head counts differ without enable_gqa"
    return None
