"""Rewrite: replace each matched attention site by a call to a ``BinaryAttentionSite``.

For site i it adds the submodule ``<module path>.binattn_site_<i>`` (under the module the
attention came from, so exported graphs still name it; ``binattn_site_<i>`` at the top where
the path is unknown) and ``binattn_bias_<i>`` when a learned bias is configured, inserts
``kᵀ→k`` transposes and the merged mask where needed, reroutes the users of the attention
output, and erases the nodes that became dead. What it does not: find sites (``matchers``) or
capture graphs (``capture``).
"""
from __future__ import annotations

import operator
from typing import Any, Callable, Optional

import torch
from torch import fx

from ..ops.bias import RelPosBias, SequenceRelPosBias, sequence_relpos_index
from .bias_setup import make_bias
from .config import BinarizeConfig
from .glue import merge_masks, scores_shaped
from .matchers import Match, hint
from .report import SiteRow
from .site import BinaryAttentionSite

aten = torch.ops.aten

FilterFn = Callable[[SiteRow], bool]


def _device(gm: fx.GraphModule) -> torch.device:
    for tensor in list(gm.parameters()) + list(gm.buffers()):
        return tensor.device
    return torch.device("cpu")


def _erase_dead(graph: fx.Graph, nodes: list[fx.Node]) -> None:
    """Erase the match's nodes that nothing uses any more (never anything else)."""
    pending = [n for n in dict.fromkeys(nodes) if n.graph is graph]
    changed = True
    while changed:
        changed = False
        for node in list(pending):
            if not node.users:
                graph.erase_node(node)
                pending.remove(node)
                changed = True


def _dim_order(val: torch.Tensor) -> list[int]:
    """Dims from outermost to innermost by stride (ties keep the logical order)."""
    strides = [hint(s) for s in val.stride()]
    return sorted(range(val.dim()), key=lambda d: -strides[d])


SITE_ORDER = [0, 2, 1, 3]  # a site's 4-D output is [B, H, N, D] laid out as [B, N, H, D]


def _match_layout(graph: fx.Graph, out: fx.Node, original: fx.Node) -> fx.Node:
    """Give the site's output (4-D: laid out as [B, N, H, D], ``BinaryAttentionSite._finish``;
    else contiguous) the memory layout of the value it replaces.

    aot_autograd graphs rely on it: e.g. the CPU flash-attention op returns [B, H, N, D] laid
    out as [B, N, H, D], and the graph then *views* it as [B, N, H·D]. Where the layouts agree
    (SDPA's fused kernels, FlashAttention's) nothing is inserted: no copy.
    """
    val = original.meta.get("val")
    if not isinstance(val, torch.Tensor) or val.dim() < 2:
        return out
    order = _dim_order(val)
    if order == (SITE_ORDER if val.dim() == 4 else list(range(val.dim()))):
        return out
    inverse = [order.index(d) for d in range(val.dim())]
    permuted = graph.call_function(aten.permute.default, (out, order))
    dense = graph.call_function(aten.clone.default, (permuted,),
                                {"memory_format": torch.contiguous_format})
    return graph.call_function(aten.permute.default, (dense, inverse))


def _add_module(gm: fx.GraphModule, name: str, module: torch.nn.Module) -> bool:
    """add_submodule, False where a part of the path is taken by something not a module."""
    try:
        return bool(gm.add_submodule(name, module))
    except (AttributeError, KeyError, TypeError):
        return False


def site_name(module_path: str, index: int) -> str:
    """``blocks.0.attn.binattn_site_3``; ``binattn_site_3`` where the path is no module path."""
    leaf = f"binattn_site_{index}"
    parts = module_path.split(".")
    if module_path and all(p.isidentifier() or p.isdigit() for p in parts):
        return f"{module_path}.{leaf}"
    return leaf


def _bias_inputs(gm: fx.GraphModule, name: str, bias: torch.nn.Module, q: fx.Node,
                 k: fx.Node) -> dict[str, fx.Node]:
    """Add the bias module; the site's ``bias`` (and ``bias_index``) inputs read from it: a
    ``RelPosBias`` hands over its table and index, a ``SequenceRelPosBias`` its table and the
    index of this call's lengths (q's and k's dim −2, symbolic in a dynamic graph; both looked
    up inside the op), any other bias module its output."""
    gm.add_submodule(name, bias.to(_device(gm)))
    graph = gm.graph
    if isinstance(bias, RelPosBias):
        return {"bias": graph.get_attr(f"{name}.table"),
                "bias_index": graph.get_attr(f"{name}.index")}
    if isinstance(bias, SequenceRelPosBias):
        table = graph.get_attr(f"{name}.table")
        n_q, n_k = (graph.call_function(aten.sym_size.int, (x, -2)) for x in (q, k))
        return {"bias": table,
                "bias_index": graph.call_function(sequence_relpos_index, (table, n_q, n_k))}
    return {"bias": graph.call_module(name)}


def _mask_input(graph: fx.Graph, m: Match, i: int) -> fx.Node:
    """Mask part i, brought to the site's scores where it was found at another view of them."""
    node, prep = m.mask_parts[i][0], m.mask_preps.get(i)
    if prep is None:
        return node
    return graph.call_function(scores_shaped, (node, prep.a, prep.b),
                               {"before": prep.before, "after": prep.after,
                                "factor": prep.factor})


def rewrite_site(gm: fx.GraphModule, index: int, m: Match, row: SiteRow,
                 config: BinarizeConfig, model: Any) -> None:
    """Rewrite one site in place; fills row.bias."""
    shape = row.shape
    found = dict(m.options, **({} if m.soft_cap is None else {"soft_cap": m.soft_cap}))
    options = config.site_options(m.is_causal, m.scale, **found)
    kwargs = dict(index=index, module_path=row.module_path, matcher=m.matcher, shape=shape,
                  options=options, mode=config.mode)
    site = BinaryAttentionSite(**kwargs).to(_device(gm))
    for name, value in m.static_scales.items():
        setattr(site, name, value.detach().clone())
    if m.matcher == "binattn-op":   # already binary: keep the graph's own bias input
        bias, row.bias = None, "from graph" if m.bias_node is not None else "-"
    else:
        bias, row.bias = make_bias(config, model, shape["Hq"], shape["Nq"], shape["Nk"], index)
    name = site_name(row.module_path, index)
    if not _add_module(gm, name, site):
        name = f"binattn_site_{index}"
        gm.add_submodule(name, site)
    graph = gm.graph
    with graph.inserting_before(m.output):
        k = m.k
        if m.k_transposed:
            k = graph.call_function(aten.transpose.int, (m.k, -2, -1))
        kwargs: dict[str, Optional[fx.Node]] = {}
        if m.mask_parts:
            masks = tuple(_mask_input(graph, m, i) for i in range(len(m.mask_parts)))
            kinds = tuple(kind for _, kind in m.mask_parts)
            kwargs["attn_mask"] = graph.call_function(merge_masks, masks, {"kinds": kinds})
        if bias is not None:
            kwargs.update(_bias_inputs(gm, f"binattn_bias_{index}", bias, m.q, k))
        elif m.bias_node is not None:
            kwargs["bias"] = m.bias_node
            if m.bias_index_node is not None:
                kwargs["bias_index"] = m.bias_index_node
        if m.sinks_node is not None:   # the model's sink logits, one per query head
            kwargs["sinks"] = graph.call_function(aten.reshape.default, (m.sinks_node, [-1]))
        q = m.q
        for factor, op in m.q_factors:   # per-(b, h) tensor scales of the scores
            q = graph.call_function(aten.mul.Tensor if op == "mul" else aten.div.Tensor,
                                    (q, factor))
        out = graph.call_module(name, (q, k, m.v), kwargs)
        if m.probs_node is not None:
            site.returns_probs = True
            both, out = out, graph.call_function(operator.getitem, (out, 0))
            probs = graph.call_function(operator.getitem, (both, 1))
            dtype = m.probs_node.meta["val"].dtype
            probs = graph.call_function(aten.to.dtype, (probs, dtype))
            chain = set(m.nodes)
            m.probs_node.replace_all_uses_with(probs, delete_user_cb=lambda u: u not in chain)
        out = _match_layout(graph, out, m.output)
    out.meta.update({key: m.output.meta[key] for key in ("val", "nn_module_stack", "stack_trace")
                     if key in m.output.meta})
    m.output.replace_all_uses_with(out)
    _erase_dead(graph, m.nodes + [m.output])


def rewrite(gm: fx.GraphModule, matches: list[Match], rows: list[SiteRow],
            config: BinarizeConfig, model: Any = None,
            filter_fn: Optional[FilterFn] = None) -> fx.GraphModule:
    """Rewrite every site whose row says "rewritten" (filter_fn may exclude some)."""
    for m, row in zip(matches, rows):
        if row.rewritten and filter_fn is not None and not filter_fn(row):
            row.status = "skipped: excluded by filter_fn"
        if row.rewritten:
            rewrite_site(gm, row.index, m, row, config, model)
    gm.graph.lint()
    gm.recompile()
    return gm
