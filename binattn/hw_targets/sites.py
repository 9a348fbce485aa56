"""Attention sites to cost: from a binarized GraphModule (``find_sites``), from a saved binarized
program (``binattn train``/``convert`` output: ``torch.ops.binattn.binary_attention`` nodes), or
a bare shape.

What it does: turn each site (its shapes B/Hq/Hkv/Nq/Nk/D/Dv, its ``top_n`` and ``pv_bits``) into
a ``SiteSpec``; build the one-site spec of ``--attention SEQ,D,HEADS[,TOPK]``. What it does not:
load or binarize models (the CLI does, through ``binattn.model_io`` and ``binattn.binarize``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..ops.options import from_op_args
from .cost_model import AttentionShape
from .hardware import HardwareConfigError


@dataclass(frozen=True)
class SiteSpec:
    """One attention site: where it is, its shape and the precisions it uses."""

    index: int
    layer: str
    matcher: str
    shape: AttentionShape            # includes top_k and pv_bits
    binarizer: str = "sign"


def parse_attention(spec: str) -> AttentionShape:
    """``"SEQ,D,HEADS[,TOPK]"`` → a validated square self-attention shape."""
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) not in (3, 4) or not all(p.isdigit() for p in parts):
        raise HardwareConfigError(
            f"--attention wants SEQ,D,HEADS[,TOPK] as positive integers, got {spec!r}")
    seq, dim, heads, *top = (int(p) for p in parts)
    if min(seq, dim, heads, *top) < 1:
        raise HardwareConfigError(f"--attention SEQ,D,HEADS[,TOPK] must all be >= 1, got {spec!r}")
    return AttentionShape.square(seq, dim, heads, top[0] if top else None)


def attention_site(shape: AttentionShape) -> SiteSpec:
    """The single site costed by ``--attention``."""
    return SiteSpec(0, "attention", "--attention", shape)


def sites_from_graph(gm, top_k: Optional[int] = None) -> list[SiteSpec]:
    """Specs of every rewritten site of a binarized GraphModule, in graph order.

    ``top_k`` overrides each site's ``top_n`` (to cost "as if" trained with HAD's top-N).
    """
    from ..binarize_pass import find_sites  # the pass is only needed on this path

    specs = []
    for site in find_sites(gm):
        s = site.shape
        n_keys = int(s["Nk"])
        options = site.options
        k = _override_top_k(top_k, options.top_n, n_keys)
        shape = AttentionShape(int(s["B"]), int(s["Hq"]), int(s["Hkv"]), int(s["Nq"]), n_keys,
                               int(s["D"]), int(s.get("Dv", s["D"])), k,
                               options.pv_bits).validate()
        specs.append(SiteSpec(int(site.index), str(site.module_path), str(site.matcher), shape,
                              options.binarizer))
    return specs


def binattn_attention_nodes(graph_owner: Any) -> list:
    """The ``torch.ops.binattn.binary_attention`` call nodes of a program / GraphModule."""
    graph = graph_owner.graph
    op = torch.ops.binattn.binary_attention.default
    return [n for n in graph.nodes if n.op == "call_function" and n.target == op]


def _layer_name(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    paths = [path for path, _ in stack.values() if path]
    return paths[-1] if paths else node.name


def _override_top_k(top_k: Optional[int], own: Optional[int], n_keys: int) -> Optional[int]:
    k = top_k if top_k is not None else own
    return None if k is not None and k >= n_keys else k   # keeps every key, as the op does


def sites_from_program(program: Any, top_k: Optional[int] = None) -> list[SiteSpec]:
    """Specs of the binattn attention calls of an ExportedProgram (e.g. a trained .pt2)."""
    from ..binarize_pass.matchers.base import hint

    specs = []
    for index, node in enumerate(binattn_attention_nodes(program)):
        q, k, v = (a.meta["val"] for a in node.args[:3])
        if q.dim() == 3:
            q, k, v = q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)
        b, hq, nq, d = (hint(x) for x in q.shape)
        hkv, nk, dv = hint(k.shape[1]), hint(k.shape[2]), hint(v.shape[-1])
        _, options = from_op_args(tuple(node.args[3:]), dict(node.kwargs))
        shape = AttentionShape(max(b, 1), hq, hkv, nq, nk, d, dv,
                               _override_top_k(top_k, options.top_n, nk),
                               options.pv_bits).validate()
        specs.append(SiteSpec(index, _layer_name(node), "binattn.binary_attention", shape,
                              options.binarizer))
    return specs


def site_specs(model: Any, top_k: Optional[int] = None) -> list[SiteSpec]:
    """Specs of a binarized GraphModule or of a program holding binattn attention calls."""
    if isinstance(model, torch.export.ExportedProgram):
        return sites_from_program(model, top_k)
    return sites_from_graph(model, top_k)
