"""The attention sites of a binarized model, seen from training: find, record, make the teacher.

What it does: lists the ``BinaryAttentionSite`` modules of a model (graph order), sets options
on all of them at once (op options by replacing each site's ``AttentionOptions``), records
their attention probabilities / outputs during one forward (``Recorder``), and builds the
self-distillation teacher — a frozen copy of the same GraphModule with every site in
``mode="float"`` (exact full-precision attention, no learned bias), i.e. the model before
binarization.

What it does not: rewrite models (``binattn.binarize``) or compute losses (``losses``).
"""
from __future__ import annotations

import copy
from typing import Any, Optional

import torch
from torch import nn

from ..binarize_pass.site import BinaryAttentionSite
from ..ops.options import OPTION_NAMES


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def find_sites(model: nn.Module) -> list[BinaryAttentionSite]:
    """Every BinaryAttentionSite in ``model``, ordered by ``index`` (graph order)."""
    sites = [m for m in unwrap(model).modules() if isinstance(m, BinaryAttentionSite)]
    return sorted(sites, key=lambda s: s.index)


def set_options(sites: list[BinaryAttentionSite], **changes: Any) -> None:
    """Change every site: op options (binarizer, temperature, ste_clip, top_n, ...) replace
    each site's ``AttentionOptions`` by a checked copy (its causality and scale kept); other
    names (``mode``, ``record_probs``) set the attribute."""
    options = {name: value for name, value in changes.items() if name in OPTION_NAMES}
    attributes = {name: value for name, value in changes.items() if name not in options}
    for site in sites:
        for name in attributes:
            if not hasattr(site, name):
                raise AttributeError(f"BinaryAttentionSite has no option {name!r}")
        site.set_options(**options)
        for name, value in attributes.items():
            setattr(site, name, value)


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen full-precision copy: same weights, every site in ``mode="float"``."""
    teacher = copy.deepcopy(unwrap(student))
    set_options(find_sites(teacher), mode="float", record_probs=False)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class Recorder:
    """Collect per-site attention probabilities and/or outputs of one forward.

    ``with Recorder(sites, probs=True, outputs=False) as rec: model(x)`` then ``rec.probs`` /
    ``rec.outputs`` hold one tensor per site (graph order). Probabilities come from the sites'
    ``record_probs``/``last_probs``; outputs from forward hooks. Both keep the autograd graph.
    """

    def __init__(self, sites: list[BinaryAttentionSite], probs: bool = False,
                 outputs: bool = False):
        self.sites, self.want_probs, self.want_outputs = sites, probs, outputs
        self._kept_probs: Optional[list[torch.Tensor]] = None
        self.outputs: list[torch.Tensor] = []
        self._hooks: list = []
        self._previous: list[bool] = []

    @property
    def probs(self) -> list[torch.Tensor]:
        """Probabilities of the last forward (live inside the block, kept after it)."""
        if self._kept_probs is not None:
            return self._kept_probs
        if not self.want_probs:
            return []
        return [s.last_probs for s in self.sites if s.last_probs is not None]

    def __enter__(self) -> "Recorder":
        self._kept_probs = None
        self._previous = [s.record_probs for s in self.sites]
        for site in self.sites:
            site.record_probs = self.want_probs
            site.last_probs = None
            if self.want_outputs:
                self._hooks.append(site.register_forward_hook(self._keep_output))
        return self

    def _keep_output(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        self.outputs.append(output)

    def __exit__(self, *exc: Any) -> None:
        for hook in self._hooks:
            hook.remove()
        self._kept_probs = self.probs
        for site, previous in zip(self.sites, self._previous):
            site.record_probs = previous
            site.last_probs = None


def static_scale_stats(model: nn.Module, sites: list[BinaryAttentionSite],
                       inputs_iter, max_batches: int) -> list[tuple[float, float]]:
    """HAD calibration: per site, the std of q and of k averaged over up to ``max_batches``.

    Runs ``model(*inputs)`` for each batch of ``inputs_iter`` under ``no_grad`` with forward
    pre-hooks on the sites; returns ``[(σ_q, σ_k), ...]`` in site order.
    """
    sums = [[0.0, 0.0] for _ in sites]
    seen = 0

    def hook_for(i: int):
        def hook(module: nn.Module, args: tuple) -> None:
            q, k = args[0], args[1]
            sums[i][0] += float(q.detach().float().std())
            sums[i][1] += float(k.detach().float().std())
        return hook

    hooks = [site.register_forward_pre_hook(hook_for(i)) for i, site in enumerate(sites)]
    try:
        with torch.no_grad():
            for inputs in inputs_iter:
                if seen >= max_batches:
                    break
                model(*inputs)
                seen += 1
    finally:
        for h in hooks:
            h.remove()
    if seen == 0:
        raise ValueError("calibration needs at least one batch")
    return [(sq / seen, sk / seen) for sq, sk in sums]


def bias_parameter_names(model: nn.Module) -> set[str]:
    """Names of the learned attention-bias parameters added by the pass (``binattn_bias_<i>``)."""
    return {name for name, _ in unwrap(model).named_parameters() if "binattn_bias" in name}


def site_summary(sites: list[BinaryAttentionSite]) -> Optional[dict]:
    """The options the sites share now (for logs), or None without sites."""
    if not sites:
        return None
    options = sites[0].options
    names = ("scale_mode", "binarizer", "temperature", "ste_clip", "top_n", "pv_bits")
    return {"sites": len(sites), **{name: getattr(options, name) for name in names}}
