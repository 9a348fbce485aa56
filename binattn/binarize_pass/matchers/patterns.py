"""Attention forms as patterns: a PyTorch function traced into an Inductor ``PatternExpr``.

A :class:`Form` is one piece of an attention written as the PyTorch that produces it (e.g.
``scores * c``, ``torch.softmax(s, -1)``, ``torch.matmul(probs, v)``) plus its *effect* on the
replacement (what it contributes to ``binary_attention``'s arguments). :func:`patterns_of`
traces the function with ``make_fx(pre_dispatch=True)`` — the ATen dialect of
``torch.export`` — and turns the graph into a pattern with
``torch._inductor.pattern_matcher.fx_to_pattern``, as Inductor's ``fuse_attention.py`` does:
tensor arguments and the scalars named in ``Form.scalars`` become ``KeywordArg`` s, ints, bools,
dtypes and shape lists are ignored (the effect checks dims where they matter). Overloads that
take the same arguments (``mul.Tensor``/``mul.Scalar``, ``matmul``/``bmm``, the ``where``
and ``masked_fill`` overloads) are matched as one. :func:`match_at` tries forms on one node
(anchored on the form's output, matching upwards) and returns the first that fits.

What it does not: know anything about attention (``forms``) or change a graph.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import torch
from torch import fx

if TYPE_CHECKING:   # imported when first used: torch._inductor costs seconds at import
    from torch._inductor.pattern_matcher import PatternExpr

aten = torch.ops.aten

# overloads with the same argument structure, matched as one
_ALIASES = [
    (aten.mul.Tensor, aten.mul.Scalar), (aten.div.Tensor, aten.div.Scalar),
    (aten.matmul.default, aten.bmm.default),
    (aten.masked_fill.Scalar, aten.masked_fill.Tensor),
    (aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf),
]
ALIASES = {op: group for group in _ALIASES for op in group}
# example tensors for tracing (shapes do not matter: shape lists are ignored in patterns)
BOOL_ARGS = ("mask_bool", "keep", "drop")
_RANK_SHAPES = {3: (6, 4, 4), 4: (2, 3, 4, 4)}


@dataclass(frozen=True, eq=False)
class Form:
    """One attention piece: the PyTorch it matches (``search``) and its ``effect``.

    ``effect(site, node, kw)`` receives the site being built, the form's output node and the
    bound arguments (``kw``: tensor argument names and ``scalars`` names → graph nodes or
    constants); it records what the form contributes (scale, mask, skip reason) and returns
    the node the walk continues from (None: stop here, or not this form after all).
    """

    name: str
    search: Callable[..., torch.Tensor]
    effect: Callable[..., Any]
    tensors: tuple[str, ...]
    scalars: dict[str, float] = field(default_factory=dict)
    rank: int = 4


@dataclass
class FormMatch:
    """A form found at a node: the form, its output node, bound arguments, matched nodes."""

    form: Form
    node: fx.Node
    kw: dict[str, Any]
    nodes: list[fx.Node]


def example_input(name: str, rank: int) -> torch.Tensor:
    """The tensor a form's argument is traced with (bool for `BOOL_ARGS` names)."""
    shape = _RANK_SHAPES[rank]
    if name in BOOL_ARGS:
        return torch.zeros(shape, dtype=torch.bool)
    return torch.randn(shape)


def _widen(pattern: Any) -> Any:
    """The same pattern with every op replaced by its group of same-argument overloads."""
    from torch._inductor import pattern_matcher as pm

    if isinstance(pattern, (list, tuple)):
        return type(pattern)(_widen(p) for p in pattern)
    if not isinstance(pattern, pm.CallFunction):
        return pattern
    fns = list(ALIASES.get(pattern.fns[0], pattern.fns))
    args = [_widen(a) for a in pattern.args]
    kwargs = {k: _widen(v) for k, v in pattern.kwargs.items()}
    return pm.CallFunction(fns, *args, _users=pattern.users, **kwargs)


@functools.lru_cache(maxsize=None)
def patterns_of(form: Form) -> PatternExpr:
    """The Inductor pattern of a form (traced once)."""
    from torch._inductor import pattern_matcher as pm
    from torch.fx.experimental.proxy_tensor import make_fx

    fn = functools.partial(form.search, **form.scalars)
    args = [example_input(name, form.rank) for name in form.tensors]
    gm = make_fx(fn, pre_dispatch=True)(*args)
    gm.graph.eliminate_dead_code()
    pattern = pm.fx_to_pattern(gm, ignore_types=(int, bool, list, torch.dtype),
                               argnames=form.tensors, scalar_workaround=dict(form.scalars))
    return _widen(pattern)


def match_at(forms: Sequence[Form], node: Any) -> Optional[FormMatch]:
    """The first form whose pattern matches with ``node`` as its output, or None."""
    from torch._inductor.pattern_matcher import is_match

    if not isinstance(node, fx.Node) or node.op != "call_function":
        return None
    for form in forms:
        m = patterns_of(form).match(node)
        if is_match(m):
            return FormMatch(form, node, dict(m.kwargs), list(m.nodes))
    return None
