"""Matcher for attention written out by hand: ``softmax(q·kᵀ·scale + mask) · v``, assembled
from the forms of ``forms``.

Anchored on a softmax form, it matches the score forms upwards until a product form (the
q·kᵀ), then the dropout forms downwards until the product with v, then the operand forms on q
and k; casts and views in between are looked through (``normalize``). What real models write::

    scores = q @ k.transpose(-2, -1)        # matmul, bmm (+ view/expand), or baddbmm(mask, …)
    scores = scores * scale | / scale       # or q (and/or k) pre-scaled: (q * scale) @ kᵀ
    scores = scores + mask                  # additive mask / bias, any number
    scores = scores.masked_fill(m, -inf)    # or torch.where(keep, scores, -inf)
    probs = scores.softmax(-1)              # also softmax(dtype=float32) then .to(dtype)
                                            # or softmax(cat([scores, sinks]) − max)[..., :-1]
    probs = dropout(probs)                  # only when inactive (eval); else a skip
    out = probs @ v                         # matmul or bmm (+ view/expand)

3-D ([B·H, N, D]) and 4-D layouts. Scale factors multiply into one constant; fills at or below
−1e4 count as −inf (rows with every key masked then give zeros, not a uniform average).
Probabilities also used off the chain (returned attention weights) are allowed at one node of
the scores' rank: the site then returns its own probabilities for them (``Match.probs_node``).
Where a softmax is not attention after all, :func:`miss_reason` says which node broke the match
and what was expected there (the report lists every such softmax).
What it does not: SDPA calls (``sdpa``); define the forms (``forms``).
"""
from __future__ import annotations

from typing import Any, Optional

from torch import fx

from . import forms
from .base import Match, rank
from .normalize import ASSERTS, VIEWS, NoMatch, describe, is_plumbing, lift, lift_output
from .patterns import match_at

NAME = "matmul-softmax"


EXPECTED_UP = ("a product q·kᵀ (" + ", ".join(f.name for f in forms.PRODUCTS) + ") or a score "
               "form (" + ", ".join(f.name for f in forms.SCORE_FORMS) + ")")


def _walk_up(softmax_in: Any, site: forms.Site) -> tuple[Any, Any]:
    """Score forms from the softmax input up to a product form; returns its (q, kᵀ) operands."""
    cur = softmax_in
    for _ in range(64):
        if not isinstance(cur, fx.Node) or cur.op != "call_function":
            raise NoMatch(f"walking up from the softmax: {describe(cur)} is not an op "
                          f"(expected {EXPECTED_UP})")
        site.nodes.append(cur)
        product = match_at(forms.PRODUCTS, cur)
        if product is not None:
            return product.form.effect(site, product)
        if is_plumbing(cur):
            if cur.target in VIEWS:
                site.views.append(cur)
            cur = cur.args[0]
            continue
        fm = match_at(forms.SCORE_FORMS, cur)
        nxt = fm.form.effect(site, fm) if fm is not None else None
        if nxt is None:
            raise NoMatch(f"walking up from the softmax: {describe(cur)} is not "
                          f"{EXPECTED_UP}" + ("" if fm is None else f" ({fm.form.name} "
                                                                   "with other arguments)"))
        cur = nxt
    raise NoMatch("walking up from the softmax: no product q·kᵀ within 64 ops")


def _step_down(cur: fx.Node, user: fx.Node, site: Optional[forms.Site]) -> Optional[tuple]:
    """One form down from the probs: ("done", v, output) at the product with v, ("next", node)
    for dropout/cast/view, None if ``user`` does not continue the attention. Effects are
    applied only with a ``site``."""
    if user.op != "call_function":
        return None
    if forms.is_sink_drop(user):   # probs[..., :-1] after a sink column
        if site is not None and site.sinks is None:
            site.set_skip(f"{describe(user)} drops a probability column with no sink")
        return "next", user
    out = match_at(forms.OUTPUTS, user)
    if out is not None:
        return ("done", out.form.effect(site, out), user) if out.kw["probs"] is cur else None
    for anchor in (user, *user.users):
        fm = match_at(forms.DROPOUTS, anchor)
        if fm is not None and fm.kw["probs"] is cur:
            if site is not None:
                fm.form.effect(site, fm)
                if anchor is not user:
                    site.nodes.append(user)
            return "next", anchor
    return ("next", user) if is_plumbing(user) else None


def _continues(node: fx.Node, depth: int = 0) -> bool:
    """Whether a dropout/cast/view node leads on to the product with v."""
    if depth > 16:
        return False
    for user in node.users:
        step = _step_down(node, user, None)
        if step is not None and (step[0] == "done" or _continues(step[1], depth + 1)):
            return True
    return False


def _walk_down(softmax: fx.Node, site: forms.Site) -> tuple[Any, fx.Node]:
    """From the softmax down to the probs·v product; returns (v operand, product node)."""
    cur = softmax
    for _ in range(32):
        asserts = [u for u in cur.users if u.op == "call_function" and u.target in ASSERTS]
        site.nodes.extend(asserts)
        users = [u for u in cur.users if u not in asserts]
        steps = [(u, _step_down(cur, u, site)) for u in users]
        chain = [(u, st) for u, st in steps if st is not None and
                 (st[0] == "done" or _continues(st[1]))]
        if not chain:
            raise NoMatch(f"walking down from the softmax: no user of {describe(cur)} leads "
                          "to a product with v (expected dropout, cast/view, probs @ v)")
        user, step = chain[0]
        if len(users) > 1:
            if site.probs_node is not None or rank(cur) != site.rank:
                site.set_skip("the attention probabilities are used elsewhere in a form the "
                              "pass cannot provide")
            site.probs_node = cur
        site.nodes.append(user if step[0] == "done" else step[1])
        if step[0] == "done":
            return step[1], step[2]
        if user is not step[1]:
            site.nodes.append(user)
        cur = step[1]
    raise NoMatch("walking down from the softmax: no product with v within 32 ops")


def _peel(cur: Any, site: forms.Site) -> Any:
    """x behind constant factors ``(x * c) / c2``: each factor joins the scale."""
    for _ in range(16):
        fm = match_at(forms.SCALED_OPERAND, cur)
        nxt = fm.form.effect(site, fm) if fm is not None else None
        if nxt is None:
            return cur
        cur = nxt
    return cur


def _lifted(node: Any, site: forms.Site) -> Any:
    cur, skip = lift(node, site.rank)
    site.set_skip(skip)
    return cur


def _untranspose(kt: Any, site: forms.Site) -> Any:
    fm = match_at(forms.KEY_TRANSPOSES, kt)
    return fm.form.effect(site, fm) if fm is not None else None


def _key(kt: Any, site: forms.Site) -> tuple[Any, bool]:
    """From the kᵀ operand to k ([..., Nk, D]); (node, still_transposed). The transpose may be
    written at the product's rank (Bloom: of a 3-D view) or at the scores' (aot's chains);
    constant factors on either side of it join the scale."""
    kt = _peel(kt, site)
    k = _untranspose(kt, site)
    if k is None:
        kt = _peel(_lifted(kt, site), site)
        k = _untranspose(kt, site)
    if k is None:
        return kt, True
    return _peel(_lifted(k, site), site), False


def _match(node: fx.Node, gm: Optional[fx.GraphModule]) -> Match:
    """The hand-written attention anchored on this softmax node; NoMatch says why not."""
    site = forms.Site(gm, rank(node))
    fm = match_at(forms.SOFTMAXES, node)
    if fm is None or fm.form.effect(site, fm) is None:
        raise NoMatch(f"{describe(node)} is not a softmax over the last dim of 3-D or "
                      "higher scores")
    site.final = forms.strip_sink(site, fm.kw["scores"])
    a, b = _walk_up(site.final, site)
    v_operand, pv = _walk_down(node, site)
    q = _peel(_lifted(a, site), site)
    k, transposed = _key(b, site)
    v = _lifted(v_operand, site)
    outputs = lift_output(pv, site.rank)
    site.nodes.extend(outputs[1:])
    if site.rank not in (3, 4):
        site.set_skip(f"rank-{site.rank} attention (only 3-D and 4-D are supported)")
    site.nodes.append(node)
    return Match(NAME, anchor=node, output=outputs[-1], q=q, k=k, v=v,
                 k_transposed=transposed, mask_parts=site.masks, is_causal=False,
                 scale=site.scale, nodes=site.nodes, skip=site.skip,
                 probs_node=site.probs_node, mask_preps=site.preps(a, b, site.final),
                 q_factors=site.q_factors, soft_cap=site.soft_cap, sinks_node=site.sinks,
                 notes=site.notes)


def match(node: fx.Node, gm: Optional[fx.GraphModule]) -> Optional[Match]:
    """The hand-written attention anchored on this softmax node, or None."""
    if node.op != "call_function" or node.target not in forms.SOFTMAX_TARGETS:
        return None
    try:
        return _match(node, gm)
    except NoMatch:
        return None


def miss_reason(node: fx.Node, gm: Optional[fx.GraphModule]) -> Optional[str]:
    """Why this softmax is not (rewritable) attention: the node that broke the match and what
    was expected there; None for a node that is no softmax or that matches."""
    if node.op != "call_function" or node.target not in forms.SOFTMAX_TARGETS:
        return None
    try:
        _match(node, gm)
    except NoMatch as e:
        return str(e)
    return None
