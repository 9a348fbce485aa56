"""Matcher for attention written out by hand: ``softmax(q·kᵀ·scale + mask) · v``.

Anchored on a softmax over the last dim, it walks up to the q·kᵀ product and down to the
product with v, accepting what real models write between them:

    scores = q @ k.transpose(-2, -1)        # matmul, bmm (+ view/expand), or baddbmm(mask, …)
    scores = scores * scale | / scale       # or q (and/or k) pre-scaled: (q * scale) @ kᵀ
    scores = scores + mask                  # additive mask / bias, any number
    scores = scores.masked_fill(m, -inf)    # or torch.where(keep, scores, -inf)
    probs = scores.softmax(-1)              # also softmax(dtype=float32) then .to(dtype)
    probs = dropout(probs)                  # only when inactive (eval); else a skip
    out = probs @ v                         # matmul or bmm (+ view/expand)

3-D ([B·H, N, D]) and 4-D layouts; the views aot_autograd adds around ``bmm`` are looked
through so the site sees the 4-D tensors. Scale factors multiply into one constant; fills at
or below −1e4 count as −inf (rows with every key masked then give zeros, not a uniform average).
What it does not: SDPA calls (``sdpa``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import fx

from .base import NEG_INF_THRESHOLD, Match, const_value, meta_val, norm_dim, rank

aten = torch.ops.aten
prims = torch.ops.prims

NAME = "matmul-softmax"

SOFTMAX = {aten.softmax.int, aten._softmax.default, aten._safe_softmax.default}
MATMUL = {aten.matmul.default, aten.bmm.default}
CASTS = {aten._to_copy.default, aten.to.dtype, aten.to.dtype_layout, aten.type_as.default,
         prims.convert_element_type.default, aten.clone.default, aten.contiguous.default,
         aten.alias.default, aten.detach.default}
VIEWS = {aten.view.default, aten._unsafe_view.default, aten.reshape.default,
         aten.expand.default}
DROPOUT = {aten.dropout.default, aten.native_dropout.default}
# same values, same dtype: looked through to reach q / k / v (e.g. aot's expand → clone → view)
SAME_VALUE = {aten.expand.default, aten.clone.default, aten.contiguous.default,
              aten.alias.default}
# export keeps metadata assertions on intermediate tensors; they are not real users
ASSERTS = {aten._assert_tensor_metadata.default}


class _NoMatch(Exception):
    """Not attention after all."""


class _Walk:
    """State of one match attempt: scale, masks, dead nodes, skip reason."""

    def __init__(self, gm: Optional[fx.GraphModule], scores_rank: int):
        self.gm, self.rank = gm, scores_rank
        self.scale, self.masks, self.nodes = 1.0, [], []
        self.skip: Optional[str] = None
        self.scaled_after = False   # walking up: a scale op seen before any mask op
        self.probs_node: Optional[fx.Node] = None

    def set_skip(self, reason: str) -> None:
        self.skip = self.skip or reason


def _is_view(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in VIEWS | CASTS


def _lift(node: fx.Node, target_rank: int, walk: _Walk) -> fx.Node:
    """Look through view/expand/clone back to the tensor of the scores' rank."""
    cur = node
    while rank(cur) != target_rank and isinstance(cur, fx.Node) and _is_view(cur):
        if cur.target is aten.expand.default and meta_val(cur.args[0]) is not None and \
                meta_val(cur.args[0]).dim() == rank(cur) and \
                tuple(meta_val(cur.args[0]).shape) != tuple(meta_val(cur).shape):
            walk.set_skip("k/v are broadcast by expand (repeated heads)")
        cur = cur.args[0]
    while isinstance(cur, fx.Node) and cur.op == "call_function" and \
            cur.target in SAME_VALUE and rank(cur.args[0]) == target_rank:
        if tuple(meta_val(cur.args[0]).shape) != tuple(meta_val(cur).shape):
            walk.set_skip("k/v are broadcast by expand (repeated heads)")
        cur = cur.args[0]
    if rank(cur) != target_rank:
        raise _NoMatch
    return cur


def _peel_scale(node: fx.Node, walk: _Walk) -> fx.Node:
    """(x * c) or (x / c) with a positive constant c → x, multiplying c into the scale."""
    while isinstance(node, fx.Node) and node.op == "call_function" and \
            node.target in (aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar):
        a, b = node.args[0], node.args[1]
        c, x = const_value(b, walk.gm), a
        if c is None and node.target in (aten.mul.Tensor, aten.mul.Scalar):
            c, x = const_value(a, walk.gm), b
        if c is None or c <= 0 or len(node.users) != 1:
            break
        walk.scale *= c if node.target in (aten.mul.Tensor, aten.mul.Scalar) else 1.0 / c
        walk.nodes.append(node)
        node = x
    return node


def _scale_step(node: fx.Node, walk: _Walk) -> Optional[fx.Node]:
    """A mul/div of the scores by a constant: fold it into the scale; return the scores input."""
    is_mul = node.target in (aten.mul.Tensor, aten.mul.Scalar)
    a, b = node.args[0], node.args[1]
    c, scores = const_value(b, walk.gm), a
    if c is None and is_mul:
        c, scores = const_value(a, walk.gm), b
    if c is None:
        tensor_scores = a if _leads_to_scores(a) else b
        walk.set_skip("the scores are scaled by a tensor that is not a constant")
        return tensor_scores if isinstance(tensor_scores, fx.Node) else None
    if not walk.masks:
        walk.scaled_after = True
    if c == 0:
        walk.set_skip("the scores are multiplied by 0")
        return scores
    walk.scale *= c if is_mul else 1.0 / c
    return scores


def _leads_to_scores(node: fx.Node, max_depth: int = 12) -> bool:
    """Whether node is (a cheap chain away from) the q·kᵀ product (breadth-first, bounded)."""
    frontier, seen = [node], set()
    for _ in range(max_depth + 1):
        nxt = []
        for cur in frontier:
            if not isinstance(cur, fx.Node) or cur.op != "call_function" or cur in seen:
                continue
            seen.add(cur)
            if cur.target in MATMUL or cur.target is aten.baddbmm.default:
                return True
            if cur.target not in SOFTMAX:
                nxt.extend(a for a in cur.args if isinstance(a, fx.Node))
        frontier = nxt
    return False


def _mask_step(node: fx.Node, walk: _Walk) -> Optional[fx.Node]:
    """add / masked_fill / where: record the mask part; return the scores input."""
    t = node.target
    if t in (aten.add.Tensor, aten.sub.Tensor):
        a, b = node.args[0], node.args[1]
        if node.kwargs.get("alpha", 1) != 1 or len(node.args) > 2:
            return None
        if t is aten.sub.Tensor:
            return None
        scores, mask = (a, b) if _leads_to_scores(a) else (b, a)
        if not isinstance(mask, fx.Node):
            return None
        walk.masks.append((mask, "additive"))
    elif t in (aten.masked_fill.Scalar, aten.masked_fill.Tensor):
        scores, mask, value = node.args[:3]
        fill = const_value(value, walk.gm)
        if fill is None or fill > NEG_INF_THRESHOLD:
            walk.set_skip(f"masked_fill with value {fill} (not a large negative number)")
        walk.masks.append((mask, "drop"))
    elif t in (aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf):
        cond, a, b = node.args[:3]
        scores_first = _leads_to_scores(a)
        scores, other = (a, b) if scores_first else (b, a)
        fill = const_value(other, walk.gm)
        if fill is None or fill > NEG_INF_THRESHOLD:
            walk.set_skip(f"where() fills with {fill} (not a large negative number)")
        walk.masks.append((cond, "keep" if scores_first else "drop"))
    else:
        return None
    if walk.scaled_after:
        walk.set_skip("the scores are scaled after a mask is added")
    return scores


def _walk_up(softmax_in: fx.Node, walk: _Walk) -> tuple[fx.Node, fx.Node]:
    """From the softmax input up to the q·kᵀ product; returns (a, b) of a @ b."""
    cur = softmax_in
    for _ in range(64):
        if not isinstance(cur, fx.Node) or cur.op != "call_function":
            raise _NoMatch
        walk.nodes.append(cur)
        t = cur.target
        if t in MATMUL:
            return cur.args[0], cur.args[1]
        if t is aten.baddbmm.default:
            if cur.kwargs.get("beta", 1) != 1:
                raise _NoMatch
            walk.scale *= float(cur.kwargs.get("alpha", 1))
            walk.masks.append((cur.args[0], "additive"))
            return cur.args[1], cur.args[2]
        if t in CASTS or t in VIEWS:
            nxt = cur.args[0]
        elif t in (aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar):
            nxt = _scale_step(cur, walk)
        else:
            nxt = _mask_step(cur, walk)
        if nxt is None:
            raise _NoMatch
        cur = nxt
    raise _NoMatch


def _chain_step(cur: fx.Node, user: fx.Node, walk: _Walk) -> Optional[tuple]:
    """One step down from the probs: ("done", v, pv) at the product with v, ("next", node) for
    dropout/cast/view, None if ``user`` does not continue the attention."""
    if user.op != "call_function":
        return None
    t = user.target
    if t in MATMUL:
        return ("done", user.args[1], user) if user.args[0] is cur else None
    if t in DROPOUT:
        p = const_value(user.args[1], walk.gm)
        train = user.args[2] if len(user.args) > 2 else True
        if train is not False and (p is None or p > 0):
            walk.set_skip(f"attention dropout p={user.args[1]} is active "
                          "(model in training mode)")
        if t is aten.native_dropout.default:
            getters = list(user.users)
            if len(getters) != 1 or getters[0].args[1] != 0:
                return None
            walk.nodes.append(user)
            return "next", getters[0]
        return "next", user
    if t in CASTS or t in VIEWS:
        return "next", user
    return None


def _walk_down(softmax: fx.Node, walk: _Walk) -> tuple[fx.Node, fx.Node]:
    """From the softmax down to the probs·v product; returns (v operand, output node).

    Users of the probabilities off the chain (``nn.MultiheadAttention`` returning its weights,
    ``output_attentions``) are allowed at one node of the scores' rank: the site then also
    returns its own probabilities for them (``Match.probs_node``).
    """
    cur = softmax
    for _ in range(32):
        asserts = [u for u in cur.users if u.op == "call_function" and u.target in ASSERTS]
        walk.nodes.extend(asserts)
        users = [u for u in cur.users if u not in asserts]
        steps = [(u, _chain_step(cur, u, walk)) for u in users]
        chain = [(u, st) for u, st in steps if st is not None and
                 (st[0] == "done" or _continues(st[1], walk))]
        if not chain:
            raise _NoMatch
        user, step = chain[0]
        if len(users) > 1:
            if walk.probs_node is not None or rank(cur) != walk.rank:
                walk.set_skip("the attention probabilities are used elsewhere in a form the "
                              "pass cannot provide")
            walk.probs_node = cur
        walk.nodes.append(user if step[0] == "done" else step[1])
        if step[0] == "done":
            return step[1], step[2]
        if user is not step[1]:
            walk.nodes.append(user)
        cur = step[1]
    raise _NoMatch


def _continues(node: fx.Node, walk: _Walk, depth: int = 0) -> bool:
    """Whether a dropout/cast/view user leads on to the product with v."""
    if depth > 16:
        return False
    for user in node.users:
        if user.op == "call_function" and user.target in MATMUL and user.args[0] is node:
            return True
        if user.op == "call_function" and user.target in DROPOUT | CASTS | VIEWS:
            nxt = user
            if user.target is aten.native_dropout.default:
                nxt = next(iter(user.users), None)
                if nxt is None:
                    continue
            if _continues(nxt, walk, depth + 1):
                return True
    return False


def _lift_output(node: fx.Node, target_rank: int, walk: _Walk) -> fx.Node:
    """From a bmm output down through views to the tensor of the scores' rank."""
    cur = node
    while rank(cur) != target_rank:
        user = _single_view_user(cur)
        if user is None:
            raise _NoMatch
        walk.nodes.append(user)
        cur = user
    return cur


def _single_view_user(node: fx.Node) -> Optional[fx.Node]:
    users = list(node.users)
    if len(users) == 1 and users[0].op == "call_function" and \
            users[0].target in (aten.view.default, aten._unsafe_view.default,
                                aten.reshape.default):
        return users[0]
    return None


def _key(b: fx.Node, walk: _Walk) -> tuple[fx.Node, bool]:
    """From the kᵀ operand to k ([..., Nk, D]); (node, still_transposed)."""
    r = walk.rank
    if isinstance(b, fx.Node) and b.op == "call_function":
        if b.target is aten.transpose.int:
            dims = {norm_dim(b.args[1], r), norm_dim(b.args[2], r)}
            if dims == {r - 2, r - 1}:
                return _peel_scale(b.args[0], walk), False
        if b.target is aten.permute.default:
            perm = [norm_dim(p, r) for p in b.args[1]]
            if perm == list(range(r - 2)) + [r - 1, r - 2]:
                return _peel_scale(b.args[0], walk), False
    return b, True


def match(node: fx.Node, gm: Optional[fx.GraphModule]) -> Optional[Match]:
    if node.op != "call_function" or node.target not in SOFTMAX:
        return None
    scores_rank = rank(node)
    if scores_rank < 3 or norm_dim(node.args[1], scores_rank) != scores_rank - 1:
        return None
    walk = _Walk(gm, scores_rank)
    try:
        a, b = _walk_up(node.args[0], walk)
        v_operand, pv = _walk_down(node, walk)
        q = _peel_scale(_lift(a, scores_rank, walk), walk)
        k, transposed = _key(_lift(b, scores_rank, walk), walk)
        v = _lift(v_operand, scores_rank, walk)
        output = _lift_output(pv, scores_rank, walk)
    except _NoMatch:
        return None
    if scores_rank not in (3, 4):
        walk.set_skip(f"rank-{scores_rank} attention (only 3-D and 4-D are supported)")
    walk.nodes.append(node)
    return Match(NAME, anchor=node, output=output, q=q, k=k, v=v, k_transposed=transposed,
                 mask_parts=walk.masks, is_causal=False, scale=walk.scale, nodes=walk.nodes,
                 skip=walk.skip, probs_node=walk.probs_node)
