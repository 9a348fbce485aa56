"""What every matcher returns (``Match``) and the graph helpers they share.

A matcher looks at one anchor node (an SDPA call, a softmax) and either returns None (not
attention) or a ``Match`` naming q, k, v, the mask parts, causality and scale it found in the
graph, the node whose value the site replaces, and a ``skip`` reason when rewriting would not be
exact. What it does not: change the graph (``rewrite``).
"""
from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import fx

aten = torch.ops.aten

# mask part kinds: "mask" (SDPA-style: bool keep or additive float), "additive" (float added to
# the scores), "drop" (bool: True = masked out), "keep" (bool: True = attend)
MASK_KINDS = ("mask", "additive", "drop", "keep")
# fill values at or below this are -inf for a float32 softmax (exp underflows to exactly 0)
NEG_INF_THRESHOLD = -1.0e4


@dataclass(frozen=True)
class MaskPrep:
    """How a mask part found at an intermediate view of the scores reaches the site's scores
    ([B, H, Nq, Nk]): broadcast to the scores where it was added (the shape of the product
    ``a @ b`` after the ``before`` views), viewed as they were viewed after that (``after``),
    times ``factor`` (``baddbmm``'s ``beta``). Views are ``(op, shape)`` with op ``"reshape"``
    or ``"expand"``; ``glue.scores_shaped`` applies it."""

    a: fx.Node
    b: fx.Node
    before: tuple = ()
    after: tuple = ()
    factor: float = 1.0


@dataclass
class Match:
    """One attention site found in an ATen graph."""

    matcher: str
    anchor: fx.Node
    output: fx.Node
    q: fx.Node
    k: fx.Node
    v: fx.Node
    k_transposed: bool = False          # k node holds kᵀ ([..., D, Nk]); rewrite transposes it
    mask_parts: list[tuple[fx.Node, str]] = field(default_factory=list)
    is_causal: bool = False
    scale: Optional[float] = None       # None: 1/sqrt(D) as in SDPA
    nodes: list[fx.Node] = field(default_factory=list)  # nodes made dead by the rewrite
    skip: Optional[str] = None
    probs_node: Optional[fx.Node] = None  # probabilities also used off the attention chain
    shape: Optional[dict] = None          # shapes, where q/k/v do not tell them
    bias_node: Optional[fx.Node] = None   # an existing bias input (binarized graphs)
    bias_index_node: Optional[fx.Node] = None   # its table index (a table bias)
    options: dict = field(default_factory=dict)        # site options found in the graph
    static_scales: dict = field(default_factory=dict)  # q_scale/k_scale found in the graph
    mask_preps: dict[int, MaskPrep] = field(default_factory=dict)  # mask_parts index → prep
    q_factors: list[fx.Node] = field(default_factory=list)  # per-(b, h) tensor scales → q · t
    soft_cap: Optional[float] = None    # tanh(s / c) · c before the masks: the op's soft_cap
    sinks_node: Optional[fx.Node] = None  # per-head sink logits (numel Hq): the op's sinks
    notes: list[str] = field(default_factory=list)      # what the report says beside the row

    @property
    def mask_desc(self) -> str:
        if not self.mask_parts:
            return "-"
        kinds = []
        for node, kind in self.mask_parts:
            val = meta_val(node)
            dtype = "bool" if val is not None and val.dtype == torch.bool else "float"
            shape = "x".join(str(hint(s)) for s in val.shape) if val is not None else "?"
            kinds.append(f"{kind}:{dtype}[{shape}]")
        return ", ".join(kinds)


def meta_val(node: Any) -> Optional[torch.Tensor]:
    """The fake tensor recorded for a node (None for non-nodes or nodes without one)."""
    if not isinstance(node, fx.Node):
        return None
    val = node.meta.get("val")
    return val if isinstance(val, torch.Tensor) else None


def hint(size: Any) -> int:
    """A concrete int for a possibly symbolic size (its example value)."""
    if isinstance(size, torch.SymInt):
        return int(size.node.hint) if size.node.hint is not None else -1
    return int(size)


def rank(node: Any) -> int:
    val = meta_val(node)
    return -1 if val is None else val.dim()


_DIVS = (aten.div.Tensor, aten.div.Scalar)
_ARITH = {aten.mul.Tensor: operator.mul, aten.mul.Scalar: operator.mul,
          aten.div.Tensor: operator.truediv, aten.div.Scalar: operator.truediv}


def const_value(arg: Any, gm: Optional[fx.GraphModule]) -> Optional[float]:
    """The constant number an argument holds (python scalar, full([]), 0-d constant), else None."""
    if isinstance(arg, bool):
        return None
    if isinstance(arg, (int, float)):
        return float(arg)
    if not isinstance(arg, fx.Node):
        return None
    if arg.op == "call_function":
        if arg.target in (aten.full.default, aten.scalar_tensor.default) and \
                (arg.target is aten.scalar_tensor.default or list(arg.args[0]) == []):
            return const_value(arg.args[-1] if arg.target is aten.full.default else arg.args[0],
                               gm)
        if arg.target in (aten.lift_fresh_copy.default, aten.clone.default,
                          aten._to_copy.default, aten.to.dtype, aten.to.dtype_layout,
                          aten.detach.default, aten.detach_.default):
            return const_value(arg.args[0], gm)
        if arg.target is aten.sqrt.default:
            inner = const_value(arg.args[0], gm)
            return None if inner is None or inner < 0 else math.sqrt(inner)
        if arg.target in _ARITH and len(arg.args) == 2 and not arg.kwargs:
            x, y = (const_value(a, gm) for a in arg.args)
            if x is None or y is None or (y == 0 and arg.target in _DIVS):
                return None
            return _ARITH[arg.target](x, y)   # e.g. DeBERTa's sqrt(tensor(D) * factor)
        return None
    if arg.op == "get_attr" and gm is not None:
        obj = gm
        for part in str(arg.target).split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.Tensor) and obj.numel() == 1 and not obj.is_meta:
            return float(obj.reshape(()).item())
    return None


def module_path(node: fx.Node) -> str:
    """Innermost nn.Module path the node came from ('' for the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "?"
    path = list(stack.values())[-1][0]
    for prefix in ("L['self'].", "L__self__."):
        if path.startswith(prefix):
            path = path[len(prefix):]
    path = re.sub(r"(^|\.)binattn_site_\d+$", "", path)  # a site of a binarized graph
    return path or "<root>"


def norm_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def is_getitem(node: fx.Node, index: int) -> bool:
    return node.op == "call_function" and node.target is operator.getitem and node.args[1] == index
