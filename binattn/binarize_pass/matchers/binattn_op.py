"""Matcher for ``torch.ops.binattn.binary_attention`` calls: sites of an already binarized model.

A converted ``.pt2`` holds the op itself (the site modules inline when exported). This matcher
turns each call back into a ``BinaryAttentionSite`` with the same options, mask and bias input,
so a loaded ``.pt2`` is trainable and inspectable again. What it does not: float attention.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import fx

from .base import Match

NAME = "binattn-op"
ARGS = ("q", "k", "v", "bias", "attn_mask", "is_causal", "scale", "scale_mode", "q_scale",
        "k_scale", "top_n", "pv_bits", "binarizer", "temperature", "ste_clip", "bias_index",
        "sinks", "soft_cap")
OPTIONS = ("scale_mode", "top_n", "pv_bits", "binarizer", "temperature", "ste_clip",
           "soft_cap")


def _get_attr_tensor(node, gm) -> Optional[torch.Tensor]:
    if isinstance(node, fx.Node) and node.op == "get_attr" and gm is not None:
        obj = gm
        for part in str(node.target).split("."):
            obj = getattr(obj, part, None)
        return obj if isinstance(obj, torch.Tensor) else None
    return None


def match(node: fx.Node, gm: Optional[fx.GraphModule]) -> Optional[Match]:
    if node.op != "call_function" or node.target is not torch.ops.binattn.binary_attention.default:
        return None
    args = dict(zip(ARGS, node.args))
    args.update(node.kwargs)
    m = Match(NAME, anchor=node, output=node, q=args["q"], k=args["k"], v=args["v"],
              mask_parts=[(args["attn_mask"], "mask")] if args.get("attn_mask") is not None
              else [],
              is_causal=bool(args.get("is_causal", False)), scale=args.get("scale"),
              nodes=[node])
    m.bias_node = args.get("bias")
    m.bias_index_node = args.get("bias_index")
    m.sinks_node = args.get("sinks")
    m.options = {k: args[k] for k in OPTIONS if k in args}
    m.static_scales = {}
    for name in ("q_scale", "k_scale"):
        if args.get(name) is not None:
            value = _get_attr_tensor(args[name], gm)
            if value is None:
                m.skip = f"{name} is computed in the graph (not a constant)"
            m.static_scales[name] = value
    return m
