"""The pieces of a hand-written attention, each as the PyTorch it matches, with its effect on the
replacement beside it.

Every site becomes :func:`replacement` (``binary_attention`` of q, k, v with the mask, scale and
causality found). A form is a PyTorch function traced into a pattern (``patterns``); when it
matches, its effect says what it contributes to that call: ``scores * c`` → ``scale *= c``,
``scores + m`` → an additive part of ``attn_mask``, ``dropout(probs)`` in training → a skip
reason, and so on. The forms come in the five places of an attention, in the order the site
is assembled (``decomposed``)::

    scores = PRODUCTS(q, k)          # q @ kᵀ, bmm, baddbmm(mask, q, kᵀ, alpha=…)
    scores = SCORE_FORMS(scores)     # * c, / c, + mask, masked_fill, where — any number
    probs  = SOFTMAXES(scores)       # softmax over the last dim (any overload, any dtype)
    probs  = DROPOUTS(probs)         # inactive dropout (an active one is a skip)
    out    = OUTPUTS(probs, v)       # probs @ v

and the operand forms: ``SCALED_OPERAND`` (``(q * c) @ kᵀ``: c joins the scale) and
``KEY_TRANSPOSES`` (``k.transpose(-2, -1)``, ``k.permute(…, -1, -2)``). Casts and views in
between are looked through (``normalize``).

Why pieces and not whole attentions as in Inductor's ``fuse_attention.py``: a whole-attention
pattern fixes how many masks there are, in which order, where the scale sits and which
product op each side uses — over a thousand traced graphs for what models write today, and a
multiple of it for each new piece. Pieces compose: a new score modifier (soft-capping
``tanh(s / c) * c``), product (cosine attention, ALiBi ``baddbmm`` with ``beta``) or softmax
(attention sinks) is one function and its effect added to its list.

What it does not: walk the graph (``decomposed``) or rewrite it (``rewrite``).
"""
from __future__ import annotations

import operator
from typing import Any, Optional

import torch
from torch import fx

from ... import ops
from .base import NEG_INF_THRESHOLD, MaskPrep, const_value, meta_val, norm_dim, rank
from .normalize import CASTS, VIEWS, NoMatch, describe
from .patterns import Form, FormMatch

aten = torch.ops.aten
# magic values standing for scalar arguments while tracing (as in fuse_attention.py)
C, FILL, P, R = 0.4713, -1234.5, 0.1133, 0.2917


def replacement(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                attn_mask: Optional[torch.Tensor] = None, scale: Optional[float] = None,
                is_causal: bool = False) -> torch.Tensor:
    """What every matched attention becomes (``rewrite`` calls it through the site module)."""
    return ops.binary_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale)


class Site:
    """The replacement's arguments as the forms find them: scale, masks, skip reason, and the
    nodes the rewrite makes dead."""

    def __init__(self, gm: Optional[fx.GraphModule], scores_rank: int):
        self.gm, self.rank = gm, scores_rank
        self.scale, self.masks, self.nodes = 1.0, [], []
        self.skip: Optional[str] = None
        self.scaled_after = False   # walking up: a scale op seen before any mask op
        self.probs_node: Optional[fx.Node] = None
        self.final: Any = None           # the softmax input: the site's scores
        self.views: list[fx.Node] = []   # views of the scores passed walking up
        self.mask_at: list[tuple[int, Any, float]] = []   # per mask: len(views), point, factor
        self.q_factors: list[tuple[fx.Node, str]] = []    # per-(b, h) tensor scales: q * t, q / t
        self.soft_cap: Optional[float] = None
        self.sinks: Optional[fx.Node] = None   # the per-head sink logits (GPT-OSS)
        self.notes: list[str] = []

    def set_skip(self, reason: Optional[str]) -> None:
        self.skip = self.skip or reason

    def add_mask(self, mask: fx.Node, kind: str, point: fx.Node, factor: float = 1.0) -> None:
        """A mask part added to the scores at ``point`` (the node holding the sum)."""
        self.masks.append((mask, kind))
        self.mask_at.append((len(self.views), point, factor))

    def preps(self, a: fx.Node, b: fx.Node, final: Any) -> dict[int, MaskPrep]:
        """How each mask part found away from the site's scores shape (or times a factor)
        reaches it; ``a @ b`` is the product, ``final`` the softmax input."""
        out = {}
        for i, (n_views, point, factor) in enumerate(self.mask_at):
            if factor == 1.0 and _shape(point) == _shape(final):
                continue
            after = tuple(_view_spec(v) for v in reversed(self.views[:n_views]))
            before = tuple(_view_spec(v) for v in reversed(self.views[n_views:]))
            out[i] = MaskPrep(a, b, before, after, factor)
        return out


def _shape(node: Any) -> Optional[tuple[str, ...]]:
    val = meta_val(node)
    return None if val is None else tuple(str(s) for s in val.shape)


def _view_spec(node: fx.Node) -> tuple[str, Any]:
    return ("expand" if node.target is aten.expand.default else "reshape", node.args[1])


def leads_to_scores(node: Any, max_depth: int = 12) -> bool:
    """Whether node is (a cheap chain away from) the q·kᵀ product (breadth-first, bounded):
    which operand of ``a + b`` or ``where(c, a, b)`` the scores are, the other is the mask.
    The chain passes only ops the score forms are made of (``SCORE_OPS``): a term computed
    from another product through e.g. ``gather`` (DeBERTa's position terms) is a bias."""
    frontier, seen = [node], set()
    for _ in range(max_depth + 1):
        nxt = []
        for cur in frontier:
            if not isinstance(cur, fx.Node) or cur.op != "call_function" or cur in seen:
                continue
            seen.add(cur)
            if cur.target in PRODUCT_TARGETS:
                return True
            if cur.target in SCORE_OPS:
                nxt.extend(a for a in cur.args if isinstance(a, fx.Node))
        frontier = nxt
    return False


# --- products: scores = q @ kᵀ -----------------------------------------------------------

def matmul(a, b):
    return torch.matmul(a, b)   # also torch.bmm, q @ kᵀ


def matmul_effect(site: Site, fm: FormMatch) -> tuple[Any, Any]:
    """→ q = a, kᵀ = b."""
    return fm.kw["a"], fm.kw["b"]


def baddbmm(mask, a, b):
    return torch.baddbmm(mask, a, b)   # beta=, alpha= as keywords, read by the effect


def baddbmm_effect(site: Site, fm: FormMatch) -> tuple[Any, Any]:
    """→ scale *= alpha, attn_mask += beta · mask (ALiBi: a per-head linear bias)."""
    beta = const_value(fm.node.kwargs.get("beta", 1), site.gm)
    alpha = const_value(fm.node.kwargs.get("alpha", 1), site.gm)
    if beta is None or alpha is None:
        raise NoMatch(f"{describe(fm.node)} has a tensor beta/alpha (expected numbers)")
    site.scale *= alpha
    if beta != 0:
        site.add_mask(fm.kw["mask"], "additive", fm.node, beta)
        _masked(site, None)
    return fm.kw["a"], fm.kw["b"]


PRODUCTS = [Form("matmul", matmul, matmul_effect, ("a", "b")),
            Form("baddbmm", baddbmm, baddbmm_effect, ("mask", "a", "b"), rank=3)]


# --- score forms: scale and masks, walking up from the softmax --------------------------

def times_constant(x, c):
    return x * c   # also c * x


def over_constant(x, c):
    return x / c


def _factor(site: Site, fm: FormMatch, is_mul: bool) -> tuple[Optional[float], Any]:
    """(c, x) of ``x * c``, ``c * x`` or ``x / c``; c None where neither side is constant."""
    a, b = fm.node.args[0], fm.node.args[1]
    c, x = const_value(b, site.gm), a
    if c is None and is_mul:
        c, x = const_value(a, site.gm), b
    return c, x


def _scale(site: Site, fm: FormMatch, is_mul: bool) -> Optional[fx.Node]:
    """→ scale *= c (or /= c); a per-(b, h) tensor c → q * c (or q / c); any other tensor c
    or c == 0 is a skip."""
    c, scores = _factor(site, fm, is_mul)
    if not site.masks:
        site.scaled_after = True
    if c is None:
        a, b = fm.node.args[0], fm.node.args[1]
        scores, t = (a, b) if leads_to_scores(a) or not is_mul else (b, a)
        site.set_skip(_tensor_factor(site, t, scores, "mul" if is_mul else "div"))
        return scores if isinstance(scores, fx.Node) else None
    if c == 0:
        site.set_skip("the scores are multiplied by 0")
        return scores
    site.scale *= c if is_mul else 1.0 / c
    return scores


def _tensor_factor(site: Site, t: Any, scores: Any, op: str) -> Optional[str]:
    """Record a tensor factor of the scores as a factor of q (None), or say why it cannot be:
    ``s · t`` with t one value per (batch, head) is ``(q · t) · kᵀ``, and in binary attention
    ``sign(q·t) · mean|q·t| = t · sign(q) · mean|q|``, so the binary scores scale by t too."""
    why = "the scores are scaled by a tensor that is not a constant"
    t_val, s_val = meta_val(t), meta_val(scores)
    if t_val is None or s_val is None or not t_val.is_floating_point():
        return why
    shape = "x".join(str(d) for d in t_val.shape)
    if _shape(scores) != _shape(site.final):
        return f"{why} (scaled before a view of the scores)"
    try:
        fits = tuple(torch.broadcast_shapes(t_val.shape, s_val.shape)) == tuple(s_val.shape)
    except RuntimeError:
        fits = False
    if not fits or t_val.dim() > site.rank or any(
            str(d) != "1" for d in t_val.shape[-2:]):
        return f"{why} and varies over queries or keys ([{shape}]; one per head is supported)"
    site.q_factors.append((t, op))
    site.notes.append(f"scores {'times' if op == 'mul' else 'over'} the tensor {describe(t)} "
                      f"[{shape}]: folded into q (binary: through q's magnitude scale)")
    return None


def _masked(site: Site, scores: Any) -> Any:
    if site.scaled_after:
        site.set_skip("the scores are scaled after a mask is added")
    if site.soft_cap is not None:
        site.set_skip("the scores are soft-capped after a mask is added")
    return scores


def plus_mask(scores, mask):
    return scores + mask   # also mask + scores


def plus_mask_effect(site: Site, fm: FormMatch) -> Optional[fx.Node]:
    """→ attn_mask += mask (additive)."""
    if fm.node.kwargs.get("alpha", 1) != 1 or len(fm.node.args) > 2:
        return None
    a, b = fm.node.args
    scores, mask = (a, b) if leads_to_scores(a) else (b, a)
    if not isinstance(mask, fx.Node):
        return None
    site.add_mask(mask, "additive", fm.node)
    _broadcast_skip(site, fm.node, scores)
    return _masked(site, scores)


def _broadcast_skip(site: Site, point: fx.Node, scores: Any) -> None:
    if _shape(point) != _shape(scores):
        site.set_skip(f"the mask at {describe(point)} broadcasts the scores to a larger shape")


def _fill_skip(site: Site, fill: Any, what: str) -> None:
    value = const_value(fill, site.gm)
    if value is None or value > NEG_INF_THRESHOLD:
        site.set_skip(what.format(value))


def masked_fill(scores, drop, fill):
    return scores.masked_fill(drop, fill)


def masked_fill_effect(site: Site, fm: FormMatch) -> Optional[fx.Node]:
    """→ attn_mask drops where ``drop`` (the fill must be ≤ −1e4: −inf for softmax)."""
    _fill_skip(site, fm.kw["fill"], "masked_fill with value {} (not a large negative number)")
    site.add_mask(fm.kw["drop"], "drop", fm.node)
    _broadcast_skip(site, fm.node, fm.kw["scores"])
    return _masked(site, fm.kw["scores"])


def where(keep, scores, fill):
    return torch.where(keep, scores, fill)   # also where(drop, fill, scores)


def where_effect(site: Site, fm: FormMatch) -> Optional[fx.Node]:
    """→ attn_mask keeps where ``keep`` (or drops where ``drop``); the fill must be ≤ −1e4."""
    cond, a, b = fm.node.args[:3]
    scores_first = leads_to_scores(a)
    scores, other = (a, b) if scores_first else (b, a)
    _fill_skip(site, other, "where() fills with {} (not a large negative number)")
    site.add_mask(cond, "keep" if scores_first else "drop", fm.node)
    _broadcast_skip(site, fm.node, scores)
    return _masked(site, scores)


def soft_cap(scores, c):
    return torch.tanh(scores / c) * c   # Gemma-2's logit soft-capping


def soft_cap_mul(scores, r, c):
    return torch.tanh(scores * r) * c   # the same with r = 1 / c


def soft_cap_effect(site: Site, fm: FormMatch) -> Optional[fx.Node]:
    """→ the site's soft cap c (the op's ``soft_cap``: float and binary mode), when the cap
    comes after the scale and before the masks, once."""
    c = fm.kw["c"]
    r = fm.kw.get("r", 1.0 / c if c else None)
    if not c or c <= 0 or r is None or abs(r * c - 1.0) > 1e-6:
        return None
    if site.soft_cap is not None:
        site.set_skip("the scores are soft-capped twice")
    if site.scale != 1.0 or site.q_factors:
        site.set_skip("the scores are scaled after soft-capping")
    site.soft_cap = float(c)
    site.notes.append(f"logit soft-cap {c:g}: kept (the op's soft_cap, float and binary mode)")
    return fm.kw["scores"]


SCORE_FORMS = [
    Form("soft-cap", soft_cap, soft_cap_effect, ("scores",), {"c": C}),
    Form("soft-cap-mul", soft_cap_mul, soft_cap_effect, ("scores",), {"r": R, "c": C}),
    Form("scale-mul", times_constant, lambda s, fm: _scale(s, fm, True), ("x",), {"c": C}),
    Form("scale-div", over_constant, lambda s, fm: _scale(s, fm, False), ("x",), {"c": C}),
    Form("mask-add", plus_mask, plus_mask_effect, ("scores", "mask")),
    Form("masked-fill", masked_fill, masked_fill_effect, ("scores", "drop"), {"fill": FILL}),
    Form("where", where, where_effect, ("keep", "scores"), {"fill": FILL}),
]


# --- softmax over the last dim -----------------------------------------------------------

def softmax(scores):
    return torch.softmax(scores, -1)


def softmax_dtype(scores):
    return torch.softmax(scores, -1, dtype=torch.float32)   # then .to(q.dtype): a cast


def softmax_aten(scores):
    return aten._softmax(scores, -1, False)   # aot_autograd graphs


def safe_softmax(scores):
    return aten._safe_softmax(scores, -1)


def safe_softmax_dtype(scores):
    return aten._safe_softmax(scores, -1, torch.float32)


def softmax_effect(site: Site, fm: FormMatch) -> Optional[fx.Node]:
    """→ the attention itself, when over the last dim of 3-D or higher scores."""
    dim = fm.node.args[1]
    if site.rank < 3 or norm_dim(dim, site.rank) != site.rank - 1:
        return None
    return fm.kw["scores"]


SOFTMAXES = [Form(fn.__name__, fn, softmax_effect, ("scores",))
             for fn in (softmax, softmax_dtype, softmax_aten, safe_softmax, safe_softmax_dtype)]
SOFTMAX_TARGETS = {aten.softmax.int, aten._softmax.default, aten._safe_softmax.default}
PRODUCT_TARGETS = {aten.matmul.default, aten.bmm.default, aten.baddbmm.default}
# the ops score forms are made of: what leads_to_scores walks through
SCORE_OPS = VIEWS | CASTS | {
    aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar, aten.add.Tensor,
    aten.sub.Tensor, aten.neg.default, aten.tanh.default, aten.masked_fill.Scalar,
    aten.masked_fill.Tensor, aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf}


# --- attention sinks: softmax(cat([scores, sinks], -1) − max)[..., :-1] (GPT-OSS) ---------

SINK_VIEWS = VIEWS | CASTS


def _row_max_of(node: Any, x: fx.Node) -> bool:
    """Whether node is the row maximum of x over the last dim (``x.max(-1, keepdim).values``
    or ``amax``): subtracting it leaves the softmax unchanged."""
    if not isinstance(node, fx.Node):
        return False
    if node.target is operator.getitem and node.args[1] == 0:
        node = node.args[0]
        return (node.target is aten.max.dim and node.args[0] is x
                and norm_dim(node.args[1], rank(x)) == rank(x) - 1)
    return (node.target is aten.amax.default and node.args[0] is x
            and [norm_dim(d, rank(x)) for d in node.args[1]] == [rank(x) - 1])


def strip_sink(site: Site, softmax_in: Any) -> Any:
    """The scores behind an attention-sink column: ``cat([scores, sink], -1)`` (less its row
    maximum) → scores, and ``site.sinks`` the per-head logits (a node of Hq values) the sink
    column is expanded from; anything else is returned as it is."""
    cur = softmax_in
    if (isinstance(cur, fx.Node) and cur.target is aten.sub.Tensor
            and _row_max_of(cur.args[1], cur.args[0])):
        site.nodes.extend([cur, cur.args[1]])
        if cur.args[1].target is operator.getitem:
            site.nodes.append(cur.args[1].args[0])
        cur = cur.args[0]
    if not (isinstance(cur, fx.Node) and cur.target is aten.cat.default
            and len(cur.args[0]) == 2 and norm_dim(cur.args[1] if len(cur.args) > 1 else 0,
                                                   rank(cur)) == rank(cur) - 1):
        return softmax_in
    scores, column = cur.args[0]
    site.nodes.append(cur)
    heads = meta_val(scores).shape[-3] if rank(scores) == 4 else None
    base = column
    while isinstance(base, fx.Node) and base.target in SINK_VIEWS:
        site.nodes.append(base)
        base = base.args[0]
    val = meta_val(base)
    if heads is None or val is None or val.numel() != heads or meta_val(column).shape[-1] != 1:
        site.set_skip(f"the softmax's extra column {describe(column)} is not a per-head sink "
                      "of 4-D scores")
    site.sinks = base
    site.notes.append(f"attention sinks {describe(base)}: passed to the op (float and binary)")
    return scores


def is_sink_drop(node: fx.Node) -> bool:
    """``probs[..., :-1]``: the slice that drops the sink column after the softmax."""
    if node.target is not aten.slice.Tensor or len(node.args) < 4:
        return False
    dim, start, end = node.args[1:4]
    return norm_dim(dim, rank(node)) == rank(node) - 1 and start in (0, None) and end == -1


# --- dropout of the probabilities, and the product with v -------------------------------

def dropout(probs, p):
    return torch.dropout(probs, p, True)   # train flag read by the effect


def native_dropout(probs, p):
    return aten.native_dropout(probs, p, True)[0]   # aot_autograd graphs


def dropout_effect(site: Site, fm: FormMatch) -> fx.Node:
    """→ nothing when inactive (eval); active dropout is a skip (binary attention has none)."""
    node = next(n for n in fm.nodes if n.target in (aten.dropout.default,
                                                      aten.native_dropout.default))
    p = const_value(node.args[1], site.gm)
    train = node.args[2] if len(node.args) > 2 else True
    if train is not False and (p is None or p > 0):
        site.set_skip(f"attention dropout p={node.args[1]} is active "
                      "(model in training mode)")
    return fm.node


DROPOUTS = [Form("dropout", dropout, dropout_effect, ("probs",), {"p": P}),
            Form("native-dropout", native_dropout, dropout_effect, ("probs",), {"p": P})]


def probs_times_v(probs, v):
    return torch.matmul(probs, v)   # also torch.bmm


def probs_times_v_effect(site: Site, fm: FormMatch) -> Any:
    """→ v; the product is the site's output."""
    return fm.kw["v"]


OUTPUTS = [Form("probs-v", probs_times_v, probs_times_v_effect, ("probs", "v"))]


# --- operands: pre-scaled q / k, kᵀ -----------------------------------------------------

def _peel(site: Site, fm: FormMatch, is_mul: bool) -> Optional[fx.Node]:
    """(x * c) or (x / c) with a positive constant c, used once → x, scale *= c (or /= c)."""
    c, x = _factor(site, fm, is_mul)
    if c is None or c <= 0 or len(fm.node.users) != 1:
        return None
    site.scale *= c if is_mul else 1.0 / c
    site.nodes.append(fm.node)
    return x


SCALED_OPERAND = [
    Form("operand-mul", times_constant, lambda s, fm: _peel(s, fm, True), ("x",), {"c": C}),
    Form("operand-div", over_constant, lambda s, fm: _peel(s, fm, False), ("x",), {"c": C}),
]


def transpose(k):
    return k.transpose(-2, -1)


def transpose_effect(site: Site, fm: FormMatch) -> Optional[fx.Node]:
    """→ k, when the last two dims are swapped."""
    r = rank(fm.node)
    dims = {norm_dim(fm.node.args[1], r), norm_dim(fm.node.args[2], r)}
    return fm.kw["k"] if dims == {r - 2, r - 1} else None


def permute(k):
    return k.permute(0, 1, 3, 2)


def permute_effect(site: Site, fm: FormMatch) -> Optional[fx.Node]:
    """→ k, when the permutation swaps the last two dims only."""
    r = rank(fm.node)
    perm = [norm_dim(p, r) for p in fm.node.args[1]]
    return fm.kw["k"] if perm == list(range(r - 2)) + [r - 1, r - 2] else None


KEY_TRANSPOSES = [Form("transpose", transpose, transpose_effect, ("k",)),
                  Form("permute", permute, permute_effect, ("k",))]
