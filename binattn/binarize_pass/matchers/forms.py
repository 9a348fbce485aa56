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

from typing import Any, Optional

import torch
from torch import fx

from ... import ops
from .base import NEG_INF_THRESHOLD, const_value, norm_dim
from .normalize import NoMatch
from .patterns import Form, FormMatch

aten = torch.ops.aten
# magic values standing for scalar arguments while tracing (as in fuse_attention.py)
C, FILL, P = 0.4713, -1234.5, 0.1133


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

    def set_skip(self, reason: Optional[str]) -> None:
        self.skip = self.skip or reason


def leads_to_scores(node: Any, max_depth: int = 12) -> bool:
    """Whether node is (a cheap chain away from) the q·kᵀ product (breadth-first, bounded):
    which operand of ``a + b`` or ``where(c, a, b)`` the scores are, the other is the mask."""
    frontier, seen = [node], set()
    for _ in range(max_depth + 1):
        nxt = []
        for cur in frontier:
            if not isinstance(cur, fx.Node) or cur.op != "call_function" or cur in seen:
                continue
            seen.add(cur)
            if cur.target in (aten.matmul.default, aten.bmm.default, aten.baddbmm.default):
                return True
            if cur.target not in SOFTMAX_TARGETS:
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
    """→ scale *= alpha, attn_mask += mask (beta must be 1)."""
    if fm.node.kwargs.get("beta", 1) != 1:
        raise NoMatch
    site.scale *= float(fm.node.kwargs.get("alpha", 1))
    site.masks.append((fm.kw["mask"], "additive"))
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
    """→ scale *= c (or /= c); a tensor c or c == 0 is a skip."""
    c, scores = _factor(site, fm, is_mul)
    if c is None:
        a, b = fm.node.args[0], fm.node.args[1]
        tensor_scores = a if leads_to_scores(a) else b
        site.set_skip("the scores are scaled by a tensor that is not a constant")
        return tensor_scores if isinstance(tensor_scores, fx.Node) else None
    if not site.masks:
        site.scaled_after = True
    if c == 0:
        site.set_skip("the scores are multiplied by 0")
        return scores
    site.scale *= c if is_mul else 1.0 / c
    return scores


def _masked(site: Site, scores: Any) -> Any:
    if site.scaled_after:
        site.set_skip("the scores are scaled after a mask is added")
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
    site.masks.append((mask, "additive"))
    return _masked(site, scores)


def _fill_skip(site: Site, fill: Any, what: str) -> None:
    value = const_value(fill, site.gm)
    if value is None or value > NEG_INF_THRESHOLD:
        site.set_skip(what.format(value))


def masked_fill(scores, drop, fill):
    return scores.masked_fill(drop, fill)


def masked_fill_effect(site: Site, fm: FormMatch) -> Optional[fx.Node]:
    """→ attn_mask drops where ``drop`` (the fill must be ≤ −1e4: −inf for softmax)."""
    _fill_skip(site, fm.kw["fill"], "masked_fill with value {} (not a large negative number)")
    site.masks.append((fm.kw["drop"], "drop"))
    return _masked(site, fm.kw["scores"])


def where(keep, scores, fill):
    return torch.where(keep, scores, fill)   # also where(drop, fill, scores)


def where_effect(site: Site, fm: FormMatch) -> Optional[fx.Node]:
    """→ attn_mask keeps where ``keep`` (or drops where ``drop``); the fill must be ≤ −1e4."""
    cond, a, b = fm.node.args[:3]
    scores_first = leads_to_scores(a)
    scores, other = (a, b) if scores_first else (b, a)
    _fill_skip(site, other, "where() fills with {} (not a large negative number)")
    site.masks.append((cond, "keep" if scores_first else "drop"))
    return _masked(site, scores)


SCORE_FORMS = [
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
    r = site.rank
    dims = {norm_dim(fm.node.args[1], r), norm_dim(fm.node.args[2], r)}
    return fm.kw["k"] if dims == {r - 2, r - 1} else None


def permute(k):
    return k.permute(0, 1, 3, 2)


def permute_effect(site: Site, fm: FormMatch) -> Optional[fx.Node]:
    """→ k, when the permutation swaps the last two dims only."""
    r = site.rank
    perm = [norm_dim(p, r) for p in fm.node.args[1]]
    return fm.kw["k"] if perm == list(range(r - 2)) + [r - 1, r - 2] else None


KEY_TRANSPOSES = [Form("transpose", transpose, transpose_effect, ("k",)),
                  Form("permute", permute, permute_effect, ("k",))]
