"""binattn.binarize_pass: find the attention in a model's ATen graph, rewrite it to binary
attention.

``binarize(model, example_inputs, config)`` captures the model with ``torch.export``, finds every
attention site (one matcher per attention shape, ``matchers/``), rewrites each to a
``BinaryAttentionSite`` with an optional learned bias, and returns a trainable
``torch.fx.GraphModule`` (its report in ``gm.meta["binattn_report"]``). ``inspect`` returns the
report without rewriting; ``find_sites`` lists the sites of a rewritten graph. See docs/pass.md.
"""
from __future__ import annotations

import copy as copy_module

from typing import Any, Optional

import torch
from torch import fx, nn

from .capture import capture
from .config import BinarizeConfig
from .matchers import Match, find_matches, find_misses, module_path
from .noop_slices import drop_noop_slices
from .report import Miss, Report, SiteRow
from .rewrite import FilterFn, rewrite
from .site import BinaryAttentionSite

__all__ = ["binarize", "inspect", "find_sites", "BinarizeConfig", "BinaryAttentionSite",
           "Report", "SiteRow", "analyze"]

REPORT_KEY = "binattn_report"


def _model_name(model: Any) -> str:
    return type(model).__name__


def analyze(gm: fx.GraphModule, name: str, model: Any = None) -> tuple[list[Match], Report]:
    """Matches and report rows for a captured graph (no change to it)."""
    matches = find_matches(gm)
    report = Report(model=name, rows=[SiteRow.from_match(i, m) for i, m in enumerate(matches)])
    report.misses = [Miss(module_path(node), node.name, why)
                     for node, why in find_misses(gm, matches)]
    report.notes.extend(f"site {r.index} ({r.module_path}): {note}"
                        for r in report.rows for note in r.notes)
    report.notes.extend(str(miss) for miss in report.misses)
    already = sum(m.matcher == "binattn-op" for m in matches)
    if already:
        report.notes.append(f"{already} site(s) were already binary (binattn ops in the graph): "
                            "they become trainable sites again with their own options")
    if isinstance(model, nn.Module) and model.training:
        report.notes.append("the model was captured in training mode (dropout and batch norm "
                            "as in training); call model.eval() first for inference")
    return matches, report


def binarize(model: nn.Module | torch.export.ExportedProgram, example_inputs: tuple,
             config: Optional[BinarizeConfig] = None, filter_fn: Optional[FilterFn] = None, *,
             example_kwargs: Optional[dict] = None, copy: bool = True,
             dynamic_shapes: Any = None) -> fx.GraphModule:
    """Rewrite every attention site of ``model`` to 1-bit query/key attention.

    Args:
        model: an ``nn.Module`` (exported with ``torch.export``, non-strict) or ExportedProgram.
        example_inputs: positional inputs for the capture (batch dim exported dynamic where
            the model allows it).
        config: :class:`BinarizeConfig` (bias, scale mode, binarizer, ...); default: no bias.
        filter_fn: ``filter_fn(row) -> bool`` on each site's :class:`SiteRow`; False skips it.
        dynamic_shapes: ``torch.export``'s ``dynamic_shapes`` for the capture (e.g. the batch
            and sequence dims of a Hugging Face model, ``binattn.model_io.load``); default:
            the batch dim of every input, where the model allows it.
        copy: deep-copy an ``nn.Module`` first (default), so training the result leaves
            ``model`` — the full-precision teacher — untouched. ``copy=False`` shares the
            parameters (as ``torch.export`` does) and saves the memory of a second copy.

    Returns:
        A trainable ``torch.fx.GraphModule``: the original parameters plus ``binattn_bias_<i>``;
        each site is a ``call_module`` to ``<module path>.binattn_site_<i>`` (a
        :class:`BinaryAttentionSite`).
        ``gm.meta["binattn_report"]`` holds the :class:`Report`.
    """
    config = config or BinarizeConfig()
    if copy and isinstance(model, nn.Module):
        model = copy_module.deepcopy(model)
    gm = capture(model, example_inputs, example_kwargs=example_kwargs,
                 dynamic_batch=config.dynamic_batch, dynamic_shapes=dynamic_shapes)
    matches, report = analyze(gm, _model_name(model), model)
    rewrite(gm, matches, report.rows, config, model=model, filter_fn=filter_fn)
    drop_noop_slices(gm)   # export's x[:, i] slices all of dim 0: a full copy in the backward
    gm.meta[REPORT_KEY] = report
    return gm


def inspect(model: nn.Module | torch.export.ExportedProgram, example_inputs: tuple, *,
            config: Optional[BinarizeConfig] = None,
            example_kwargs: Optional[dict] = None, dynamic_shapes: Any = None) -> Report:
    """The attention sites of ``model`` and what :func:`binarize` would do with each."""
    config = config or BinarizeConfig()
    gm = capture(model, example_inputs, example_kwargs=example_kwargs,
                 dynamic_batch=config.dynamic_batch, dynamic_shapes=dynamic_shapes)
    return analyze(gm, _model_name(model), model)[1]


def find_sites(gm: nn.Module) -> list[BinaryAttentionSite]:
    """The BinaryAttentionSite modules of a rewritten graph, in graph order."""
    if isinstance(gm, fx.GraphModule):
        sites = []
        for node in gm.graph.nodes:
            if node.op == "call_module":
                mod = gm.get_submodule(node.target)
                if isinstance(mod, BinaryAttentionSite) and mod not in sites:
                    sites.append(mod)
        return sites
    return [m for m in gm.modules() if isinstance(m, BinaryAttentionSite)]
