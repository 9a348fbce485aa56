"""The normalisation applied before forms are matched: value-preserving plumbing looked through.

Between the pieces of an attention, graphs hold ops that change neither values nor meaning:
dtype casts, ``view``/``reshape``, ``clone``/``contiguous``, and the ``expand`` → ``clone`` →
``view`` → ``bmm`` → ``view`` chain aot_autograd writes for every 4-D ``matmul``. They come in
any number and order, with shapes that depend on the batch size and memory layout, so they are
not spelled out in each form (Inductor's ``fuse_attention.py`` enumerates them per batch size and
layout instead); this module normalises them away:

- :func:`is_plumbing`: a cast or view on the scores/probabilities chain, stepped over;
- :func:`lift`: from a product's operand (a 3-D view of aot's chain, an ``expand``/``clone`` of
  the same values) back to the tensor of the scores' rank — the site's q, k or v;
- :func:`lift_output`: from a 3-D ``bmm`` result down its views to the 4-D output.

It looks through, it does not rewrite: ``analyze`` leaves the graph as captured (a skipped site
stays exactly as it was). What it does not: match attention (``forms``, ``decomposed``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import fx

from .base import meta_val, rank

aten = torch.ops.aten
prims = torch.ops.prims

CASTS = {aten._to_copy.default, aten.to.dtype, aten.to.dtype_layout, aten.type_as.default,
         prims.convert_element_type.default, aten.clone.default, aten.contiguous.default,
         aten.alias.default, aten.detach.default}
VIEWS = {aten.view.default, aten._unsafe_view.default, aten.reshape.default,
         aten.expand.default}
# same values, same dtype: looked through to reach q / k / v (e.g. aot's expand → clone → view)
SAME_VALUE = {aten.expand.default, aten.clone.default, aten.contiguous.default,
              aten.alias.default}
# export keeps metadata assertions on intermediate tensors; they are not real users
ASSERTS = {aten._assert_tensor_metadata.default}
BROADCAST = "k/v are broadcast by expand (repeated heads)"


class NoMatch(Exception):
    """Not attention after all; ``str()`` says which node broke the match and what was
    expected there (``decomposed.miss_reason`` reports it)."""

    def __init__(self, reason: str = "not attention"):
        super().__init__(reason)


def describe(node: object) -> str:
    """``name (aten.op.overload)`` of a graph node, for the reasons of a miss."""
    if not isinstance(node, fx.Node):
        return repr(node)
    what = str(node.target) if node.op == "call_function" else node.op
    return f"`{node.name}` ({what})"


def is_plumbing(node: fx.Node) -> bool:
    """A cast or view: same values, stepped over between attention pieces."""
    return node.op == "call_function" and node.target in VIEWS | CASTS


def _broadcasts(node: fx.Node) -> bool:
    src, out = meta_val(node.args[0]), meta_val(node)
    return tuple(src.shape) != tuple(out.shape)


def lift(node: fx.Node, target_rank: int) -> tuple[fx.Node, Optional[str]]:
    """The tensor of the scores' rank behind a product operand, and a skip reason where an
    ``expand`` repeats heads (GQA by hand), else None."""
    cur, skip = node, None
    while rank(cur) != target_rank and isinstance(cur, fx.Node) and is_plumbing(cur):
        if cur.target is aten.expand.default and meta_val(cur.args[0]) is not None and \
                meta_val(cur.args[0]).dim() == rank(cur) and _broadcasts(cur):
            skip = skip or BROADCAST
        cur = cur.args[0]
    while isinstance(cur, fx.Node) and cur.op == "call_function" and \
            cur.target in SAME_VALUE and rank(cur.args[0]) == target_rank:
        if _broadcasts(cur):
            skip = skip or BROADCAST
        cur = cur.args[0]
    if rank(cur) != target_rank:
        raise NoMatch(f"operand {describe(node)} does not come from a rank-{target_rank} "
                      f"q/k/v (stopped at {describe(cur)}, rank {rank(cur)})")
    return cur, skip


def _single_view_user(node: fx.Node) -> Optional[fx.Node]:
    users = list(node.users)
    if len(users) == 1 and users[0].op == "call_function" and \
            users[0].target in (aten.view.default, aten._unsafe_view.default,
                                aten.reshape.default):
        return users[0]
    return None


def lift_output(node: fx.Node, target_rank: int) -> list[fx.Node]:
    """From a product's result down through views to the scores' rank: the nodes passed, the
    last of them the site's output (``[node]`` when it already has that rank)."""
    chain = [node]
    while rank(chain[-1]) != target_rank:
        user = _single_view_user(chain[-1])
        if user is None:
            raise NoMatch(f"the product with v {describe(node)} is not viewed back to "
                          f"rank {target_rank} (expected one view/reshape user)")
        chain.append(user)
    return chain
