"""Drop the no-op slices of a captured graph.

``torch.export`` writes ``x[:, 0]`` as ``select(slice(x, 0, 0, INT64_MAX), 1, 0)``: a slice of
the whole of dim 0 in front of the select. The slice changes nothing in the forward (a view of
all of ``x``), but eager autograd pays for it in the backward: ``slice_backward`` fills a zero
tensor of ``x``'s full size and copies the gradient into it — a copy of a whole activation per
training step that the original model (which calls ``select`` alone) does not make.

What it does: replaces each ``aten.slice.Tensor`` whose start is 0, step 1 and end at or past
its dim's size by its input. What it does not: touch any slice that drops an element (a
symbolic end is kept unless it is the INT64_MAX that export writes for "to the end").
"""
from __future__ import annotations

from typing import Any

import torch
from torch import fx

aten = torch.ops.aten
#: export's "to the end" (Python's ``x[a:]``)
TO_THE_END = 2**63 - 1


def _covers(end: Any, size: Any) -> bool:
    """Whether a slice ending at ``end`` keeps all ``size`` elements of its dim."""
    if end is None or (isinstance(end, int) and end >= TO_THE_END):
        return True
    return isinstance(end, int) and isinstance(size, int) and end >= size


def is_noop_slice(node: fx.Node) -> bool:
    """``node`` is ``aten.slice.Tensor(x, dim, 0, end, 1)`` keeping all of ``x``."""
    if node.op != "call_function" or node.target is not aten.slice.Tensor:
        return False
    args = list(node.args) + [None] * (5 - len(node.args))
    x, dim, start, end, step = args[:5]
    dim = node.kwargs.get("dim", 0 if dim is None else dim)
    start, end = node.kwargs.get("start", start), node.kwargs.get("end", end)
    step = node.kwargs.get("step", 1 if step is None else step)
    val = x.meta.get("val") if isinstance(x, fx.Node) else None
    if not isinstance(val, torch.Tensor) or start not in (None, 0) or step != 1:
        return False
    return _covers(end, val.shape[dim])


def drop_noop_slices(gm: fx.GraphModule) -> int:
    """Replace every no-op slice of ``gm`` by its input, in place; returns how many went."""
    dropped = 0
    for node in list(gm.graph.nodes):
        if is_noop_slice(node):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            dropped += 1
    if dropped:
        gm.graph.lint()
        gm.recompile()
    return dropped
