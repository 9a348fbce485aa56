"""The ``torch.compile`` backend ``"binattn"``: the binarize pass inside torch.compile.

``torch.compile(model, backend="binattn", options={...})`` hands Dynamo's graph to
``aot_autograd``, so the pass runs on the same kind of ATen graph as :func:`binattn.binarize`:

- a model that :func:`binattn.binarize` already rewrote (its graph holds
  ``torch.ops.binattn.*``) is only lowered — training and inference both work, the custom op's
  autograd gives the backward;
- a plain model is rewritten for inference (``torch.no_grad()`` graphs; learned bias None),
  with one warning that accuracy needs training; graphs that need a backward are left as they
  are (rewriting a forward whose backward expects float attention would be wrong).

Options (``options={...}``): any op option of :class:`BinarizeConfig` (``scale_mode``,
``top_n``, ``pv_bits``, ``binarizer``, ``mode``, ...), ``rewrite=False`` to only lower, and
``report=True`` to print each rewritten graph's site table. Lowering runs the rewritten ATen
graph (custom ops dispatch to binattn's kernels); it does not call Inductor.
What it does not: learned biases (train with :func:`binattn.binarize` + ``binattn train``).
"""
from __future__ import annotations

import sys
import warnings
from typing import Any, Optional

import torch
from torch import fx

from .binarize_pass import BinarizeConfig, analyze, rewrite
from .binarize_pass.decompositions import DECOMPOSITIONS
from .errors import UserError

NAME = "binattn"
BACKEND_OPTIONS = ("rewrite", "report")
_warned = False
MAX_REPORTS = 64
last_reports: list = []   # the reports of the graphs rewritten most recently (for inspection)


def _config(options: dict[str, Any]) -> tuple[BinarizeConfig, dict[str, Any]]:
    ours = {k: options[k] for k in BACKEND_OPTIONS if k in options}
    rest = {k: v for k, v in options.items() if k not in BACKEND_OPTIONS}
    if rest.get("bias") is not None:
        raise UserError("the binattn backend does not add learned biases (they need training): "
                        "use binattn.binarize(model, inputs, BinarizeConfig(bias=...)) and train")
    try:
        return BinarizeConfig(**rest), ours
    except TypeError as err:
        raise UserError(f"unknown binattn backend option: {err}") from err


def has_binattn_ops(gm: fx.GraphModule) -> bool:
    """Whether a graph already calls binattn's custom ops (a binarized model)."""
    return any(n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)
               and n.target.namespace == "binattn" for n in gm.graph.nodes)


def _warn_once(count: int) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"binattn backend: rewrote {count} attention site(s) of a model that was "
                      "not trained with binary attention; expect an accuracy drop until it is "
                      "trained (binattn.binarize + binattn train).", UserWarning, stacklevel=2)


def _inference_compiler(config: BinarizeConfig, ours: dict[str, Any]):
    def compile_graph(gm: fx.GraphModule, example_inputs):
        if ours.get("rewrite", True) and not has_binattn_ops(gm):
            matches, report = analyze(gm, "torch.compile graph")
            if matches:
                rewrite(gm, matches, report.rows, config)
                last_reports.append(report)
                del last_reports[:-MAX_REPORTS]
                if ours.get("report"):
                    from rich.console import Console

                    Console(stderr=True).print(report.table())
                if report.num_rewritten:
                    _warn_once(report.num_rewritten)
        return _lower(gm)
    return compile_graph


def _lower(gm: fx.GraphModule):
    from torch._functorch.aot_autograd import make_boxed_func

    return make_boxed_func(gm.forward)


def _training_compiler(gm: fx.GraphModule, example_inputs):
    return _lower(gm)


def binattn_backend(gm: fx.GraphModule, example_inputs: list,
                    options: Optional[dict[str, Any]] = None, **kwargs: Any):
    """torch.compile backend: aot_autograd with the binarize pass on inference graphs."""
    from torch._dynamo.backends.common import aot_autograd

    config, ours = _config(dict(options or {}, **kwargs))
    backend = aot_autograd(fw_compiler=_training_compiler, bw_compiler=_training_compiler,
                           inference_compiler=_inference_compiler(config, ours),
                           decompositions=DECOMPOSITIONS)
    return backend(gm, example_inputs)


def register() -> None:
    """Register ``"binattn"`` with Dynamo (idempotent)."""
    from torch._dynamo.backends.registry import _COMPILER_FNS, register_backend

    if NAME not in _COMPILER_FNS:
        register_backend(compiler_fn=binattn_backend, name=NAME)


def register_if_dynamo_loaded() -> None:
    """Called by ``import binattn``: register now when Dynamo is loaded; otherwise the
    ``torch_dynamo_backends`` entry point (setup.py) registers it when torch.compile looks it
    up, so importing binattn does not pay Dynamo's import time."""
    if "torch._dynamo" in sys.modules:
        register()
