"""The ``torch.compile`` backend ``"binattn"``: the binarize pass inside torch.compile, then
Inductor.

``torch.compile(model, backend="binattn", mode=..., options={...})``:

- a plain model compiled for inference (``torch.no_grad()`` or no input needing a gradient) is
  captured by ``aot_autograd`` into the same kind of ATen graph :func:`binattn.binarize` sees,
  every attention site is rewritten (learned bias None; one warning that accuracy needs
  training), and the rewritten graph goes to Inductor (``compile_fx``): LayerNorm, GELU,
  residuals and reshapes keep their fusions, binattn's custom ops run as extern kernels;
- a model that :func:`binattn.binarize` already rewrote (its graph calls ``torch.ops.binattn``)
  goes to Inductor as it is — forward and backward, the custom op's autograd giving the backward;
- a plain model compiled where a backward is needed is not rewritten (its backward expects float
  attention); it compiles with Inductor and a warning says why and what to do instead.

``mode`` is torch.compile's (``"default"``, ``"reduce-overhead"`` = CUDA graphs,
``"max-autotune"``, ...): it reaches Inductor. ``options``: any op option of
:class:`BinarizeConfig` (``scale_mode``, ``top_n``, ``pv_bits``, ``binarizer``, ...), with the
sites' float/binary switch spelled ``attention`` (``"binary"``, ``"float"``); ``rewrite=False``
to only compile; ``report=True`` to print each rewritten graph's site table; ``mode`` (when
``mode=`` cannot be passed beside ``options=``) and ``inductor`` (a dict of Inductor config
patches). What it does not: learned biases (train with :func:`binattn.binarize` +
``binattn train``).
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
BACKEND_OPTIONS = ("rewrite", "report", "mode", "inductor")
RENAMED = {"attention": "mode"}  # backend option -> BinarizeConfig field
_warned: set[str] = set()
MAX_REPORTS = 64
last_reports: list = []   # the reports of the graphs rewritten most recently (for inspection)


def _config(options: dict[str, Any]) -> tuple[BinarizeConfig, dict[str, Any]]:
    """(the pass's config, the backend's own options) from ``options``; UserError naming a bad
    or unknown option."""
    ours = {k: options[k] for k in BACKEND_OPTIONS if k in options}
    rest = {RENAMED.get(k, k): v for k, v in options.items() if k not in BACKEND_OPTIONS}
    if rest.get("bias") is not None:
        raise UserError("the binattn backend does not add learned biases (they need training): "
                        "use binattn.binarize(model, inputs, BinarizeConfig(bias=...)) and train")
    if ours.get("mode") in ("binary", "float"):
        raise UserError(f"binattn backend: mode={ours['mode']!r} is torch.compile's mode now "
                        f"(default, reduce-overhead, max-autotune); the sites' switch is "
                        f"options={{'attention': {ours['mode']!r}}}")
    if not isinstance(ours.get("inductor", {}), dict):
        raise UserError("binattn backend: options['inductor'] must be a dict of Inductor "
                        "config patches")
    try:
        return BinarizeConfig(**rest), ours
    except TypeError as err:
        raise UserError(f"unknown binattn backend option: {err}") from err
    except ValueError as err:
        raise UserError(f"binattn backend option: {err}") from err


def _inductor_patches(mode: Optional[str], ours: dict[str, Any]) -> dict[str, Any]:
    """Inductor config patches of torch.compile's ``mode`` and ``options['inductor']``."""
    from torch._inductor import list_mode_options

    mode = mode or ours.get("mode")
    try:
        patches = dict(list_mode_options(mode)) if mode else {}
    except RuntimeError as err:
        raise UserError(f"binattn backend: {err}") from err
    return dict(patches, **ours.get("inductor", {}))


def has_binattn_ops(gm: fx.GraphModule) -> bool:
    """Whether a graph already calls binattn's custom ops (a binarized model)."""
    def is_ours(target) -> bool:  # Dynamo graphs hold packets, aot graphs overloads
        if isinstance(target, torch._ops.OpOverloadPacket):
            return target._qualified_op_name.split("::")[0] == NAME
        return isinstance(target, torch._ops.OpOverload) and target.namespace == NAME
    return any(n.op == "call_function" and is_ours(n.target) for n in gm.graph.nodes)


def needs_backward(gm: fx.GraphModule, example_inputs: list) -> bool:
    """Whether aot_autograd will build a backward for this graph (as it decides it: a graph
    input or a parameter it lifts needs a gradient, with grad mode on)."""
    tensors = [*example_inputs, *gm.parameters()]
    return torch.is_grad_enabled() and any(
        isinstance(x, torch.Tensor) and x.requires_grad for x in tensors)


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, UserWarning, stacklevel=3)


def _rewrite(gm: fx.GraphModule, config: BinarizeConfig, ours: dict[str, Any]) -> None:
    matches, report = analyze(gm, "torch.compile graph")
    if not matches:
        return
    rewrite(gm, matches, report.rows, config)
    last_reports.append(report)
    del last_reports[:-MAX_REPORTS]
    if ours.get("report"):
        from rich.console import Console

        Console(stderr=True).print(report.table())
    if report.num_rewritten:
        _warn_once("accuracy", f"binattn backend: rewrote {report.num_rewritten} attention "
                   "site(s) of a model that was not trained with binary attention; expect an "
                   "accuracy drop until it is trained (binattn.binarize + binattn train).")


def _inference_compiler(config: BinarizeConfig, ours: dict[str, Any], patches: dict[str, Any]):
    """aot_autograd's inference compiler: rewrite the ATen graph, then hand it to Inductor
    (which traces it once more with its own decompositions; binattn's ops stay opaque)."""
    def compile_graph(gm: fx.GraphModule, example_inputs):
        from torch._functorch.aot_autograd import make_boxed_func
        from torch._inductor.compile_fx import compile_fx

        _rewrite(gm, config, ours)
        gm.recompile()
        return make_boxed_func(compile_fx(gm, example_inputs, config_patches=patches))
    return compile_graph


def _not_for_training(gm: fx.GraphModule, example_inputs):
    raise AssertionError("binattn backend: a graph that needs a backward reached the rewrite "
                         "path")  # binattn_backend routes those to Inductor directly


def binattn_backend(gm: fx.GraphModule, example_inputs: list,
                    options: Optional[dict[str, Any]] = None, mode: Optional[str] = None,
                    **kwargs: Any):
    """torch.compile backend: the binarize pass on inference graphs, Inductor for all."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.compile_fx import compile_fx

    config, ours = _config(dict(options or {}, **kwargs))
    patches = _inductor_patches(mode, ours)
    if not ours.get("rewrite", True) or has_binattn_ops(gm):
        return compile_fx(gm, example_inputs, config_patches=patches)
    if needs_backward(gm, example_inputs):
        _warn_once("training", "binattn backend: this graph needs a backward, so its attention "
                   "stays float (a rewritten forward would not match the float backward); "
                   "binarize for training with binattn.binarize(model, inputs) and compile "
                   "that, or compile under torch.no_grad() for inference.")
        return compile_fx(gm, example_inputs, config_patches=patches)
    backend = aot_autograd(fw_compiler=_not_for_training, bw_compiler=_not_for_training,
                           inference_compiler=_inference_compiler(config, ours, patches),
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
