"""torch.library registration of the ``binattn`` custom ops: schemas, fake kernels, autograd.

Ops (namespace ``binattn``):
  - ``sign_pack(Tensor x) -> (Tensor words, Tensor popcounts)``
  - ``popcount_scores(Tensor q_bits, Tensor k_bits, int D) -> Tensor``
  - ``binary_attention(q, k, v, <options.OP_ARGS>) -> Tensor``: the schema text is
    ``options.op_schema`` (bias?, attn_mask?, is_causal, scale?, scale_mode, q_scale?, k_scale?,
    top_n?, pv_bits?, binarizer, temperature, ste_clip, bias_index?=None, sinks?=None,
    soft_cap?=None — fixed by saved programs); the kernels get
    ``(q, k, v, AttentionTensors, AttentionOptions)``
  - ``binary_attention_backward(grad, <same inputs>, delta?=None) -> (dq, dk, dv, dbias,
    dsinks)`` (STE gradients; ``delta`` = rowsum(grad ∘ out), ``options.BACKWARD_ARGS``, which
    the autograd formula passes from the saved output and a kernel may use instead of dP)

Each op's real implementation goes through ``dispatch.run`` (TVM kernel or reference). The
backward is its own op so that torch.compile /
aot_autograd see an opaque node; it is the analytic VJP in ``reference.binary_attention_backward``.

What it does not: validate tensors (the wrappers in ``binattn.ops`` do that; options are checked
by ``AttentionOptions`` as they are read, once per distinct set) or hold math.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import dispatch, options, reference
from .options import AttentionOptions, AttentionTensors

LIB = "binattn"
_is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


@torch.library.custom_op(f"{LIB}::sign_pack", mutates_args=())
def sign_pack_op(x: Tensor) -> tuple[Tensor, Tensor]:
    words, pops = dispatch.run("sign_pack", x.device.type, reference.sign_pack, x)
    return words, pops


@sign_pack_op.register_fake
def _sign_pack_fake(x: Tensor) -> tuple[Tensor, Tensor]:
    words = reference.num_words(x.shape[-1])
    return (x.new_empty((*x.shape[:-1], words), dtype=torch.int32),
            x.new_empty(x.shape[:-1], dtype=torch.int32))


@torch.library.custom_op(f"{LIB}::popcount_scores", mutates_args=())
def popcount_scores_op(q_bits: Tensor, k_bits: Tensor, D: int) -> Tensor:
    return dispatch.run("popcount_scores", q_bits.device.type, reference.popcount_scores,
                        q_bits, k_bits, D)


@popcount_scores_op.register_fake
def _popcount_scores_fake(q_bits: Tensor, k_bits: Tensor, D: int) -> Tensor:
    batch = torch.broadcast_shapes(q_bits.shape[:-2], k_bits.shape[:-2])
    return q_bits.new_empty((*batch, q_bits.shape[-2], k_bits.shape[-2]), dtype=torch.int32)


def _attention_forward(q: Tensor, k: Tensor, v: Tensor, tensors: AttentionTensors,
                       options: AttentionOptions) -> Tensor:
    with torch.no_grad():
        return reference.binary_attention(q, k, v, tensors, options)


def binary_attention_op(q: Tensor, k: Tensor, v: Tensor, *args) -> Tensor:
    """``binattn::binary_attention``: the options after q, k, v in ``options.OP_ARGS`` order."""
    tensors, opts = options.from_op_args(args)
    return binary_attention_impl(q, k, v, tensors, opts)


binary_attention_op = torch.library.custom_op(
    f"{LIB}::binary_attention", binary_attention_op, mutates_args=(),
    schema=options.op_schema("Tensor q, Tensor k, Tensor v", "Tensor"))


def binary_attention_impl(q: Tensor, k: Tensor, v: Tensor, tensors: AttentionTensors,
                          opts: AttentionOptions) -> Tensor:
    """What ``binattn::binary_attention`` computes (its registered kernel, on every device): the
    dispatcher's kernel or the reference, in the op's output layout. ``binattn.ops`` calls it
    directly where the dispatcher has nothing to do (:func:`direct_call_ok`)."""
    out = dispatch.run("binary_attention", q.device.type, _attention_forward, q, k, v, tensors,
                       opts)
    return reference.in_output_layout(out, q, v)


def direct_call_ok(*tensors: Optional[Tensor]) -> bool:
    """Whether an eager call may skip torch's dispatcher and run :func:`binary_attention_impl`
    itself (saves the custom op's Python autograd and kernel wrappers, ~20-30 µs a call): no
    gradient to record, not tracing or compiling, no torch function or dispatch mode (profilers
    of ops, FlopCounterMode, fake tensors), no tensor subclass or functorch wrapper. Anything
    else goes through ``torch.ops.binattn.binary_attention`` as always."""
    if torch.compiler.is_compiling() or torch._C._is_torch_function_mode_enabled():
        return False
    if _get_current_dispatch_mode() is not None:
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is None:
            continue
        if type(t) is not Tensor or (grad and t.requires_grad) or _is_wrapped(t):
            return False
    return True


@binary_attention_op.register_fake
def _binary_attention_fake(q: Tensor, k: Tensor, v: Tensor, *args) -> Tensor:
    return reference.empty_output(q, v)


def _attention_backward(grad: Tensor, q: Tensor, k: Tensor, v: Tensor,
                        tensors: AttentionTensors, options: AttentionOptions,
                        delta: Optional[Tensor] = None):
    """Analytic STE backward of the reference (which forms its own δ from P and ignores
    ``delta``); an empty dbias (dsinks) stands for "no bias" ("no sinks")."""
    dq, dk, dv, dbias, dsinks = reference.binary_attention_backward(grad, q, k, v, tensors,
                                                                    options)
    dbias = dbias.contiguous() if dbias is not None else q.new_empty((0,))
    dsinks = dsinks.contiguous() if dsinks is not None else q.new_empty((0,))
    return dq.contiguous(), dk.contiguous(), dv.contiguous(), dbias, dsinks


def binary_attention_backward_op(grad: Tensor, q: Tensor, k: Tensor, v: Tensor,
                                 *args) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``binattn::binary_attention_backward``: ``grad``, the forward's arguments, ``delta``."""
    args, delta = options.split_backward_args(args)
    tensors, opts = options.from_op_args(args)
    return dispatch.run("binary_attention_backward", q.device.type, _attention_backward, grad,
                        q, k, v, tensors, opts, delta)


binary_attention_backward_op = torch.library.custom_op(
    f"{LIB}::binary_attention_backward", binary_attention_backward_op, mutates_args=(),
    schema=options.op_schema("Tensor grad, Tensor q, Tensor k, Tensor v",
                             "(Tensor, Tensor, Tensor, Tensor, Tensor)",
                             options.BACKWARD_ARGS))


@binary_attention_backward_op.register_fake
def _binary_attention_backward_fake(grad, q, k, v, *args):
    def like(x):  # contiguous, as the real backward returns them, whatever x's strides
        return x.new_empty(x.shape) if x is not None else q.new_empty((0,))

    tensors, _ = options.from_op_args(options.split_backward_args(args)[0])
    return like(q), like(k), like(v), like(tensors.bias), like(tensors.sinks)


def _setup_context(ctx, inputs, output):
    """Saves the inputs and the output (the out-projection's input in a model: no extra memory)
    for δ = rowsum(grad ∘ out)."""
    q, k, v, *args = inputs
    tensors, ctx.options = options.from_op_args(tuple(args))
    ctx.save_for_backward(q, k, v, output, *tensors)


def _backward(ctx, grad):
    q, k, v, out, *tensors = ctx.saved_tensors
    tensors = AttentionTensors(*tensors)
    # with 8-bit P and V the output is not P·V, so δ is not rowsum(grad ∘ out) there
    delta = reference.output_row_dot(grad, out) if ctx.options.pv_bits is None else None
    dq, dk, dv, dbias, dsinks = binary_attention_backward_op(
        grad, q, k, v, *options.op_args(tensors, ctx.options), delta)
    dbias = dbias if tensors.bias is not None else None
    dsinks = dsinks if tensors.sinks is not None else None
    return (dq, dk, dv) + options.op_grads(bias=dbias, sinks=dsinks)


binary_attention_op.register_autograd(_backward, setup_context=_setup_context)
