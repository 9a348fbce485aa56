"""The SDPA training path (``binattn.ops.sdpa``): binary attention as torch's fused SDPA on ±1
operands, forward and straight-through backward.

CPU (CI): the path called directly in float32 against the reference's output and its autograd
gradients (q, k, v, bias or bias table) on every option case of ``op_cases`` it supports; the
cases it does not support are named by ``unsupported``. GPU (skipped without one): the public op
takes the path when a gradient is recorded and says so; bf16 within dtype tolerance of the
reference; no host sync; O(N) extra memory; compiled (Inductor) with a bias.
"""
from __future__ import annotations

import pytest
import torch

from binattn import ops
from binattn.ops import dispatch, reference, sdpa
from binattn.ops.options import split_keywords

from .op_cases import CASES, Shape

SHAPE = Shape(batch=2, heads=4, kv_heads=4, n_q=45, n_k=61, head_dim=40)
SUPPORTED = [name for name, case in CASES.items()
             if not ({"top_n", "pv_bits", "soft_cap"} & set(case.options) or case.sinks)]
UNSUPPORTED = [name for name in CASES if name not in SUPPORTED]


def _grads(fn, q, k, v, kw, grad_out):
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    kw = dict(kw)
    if kw.get("bias") is not None:
        kw["bias"] = kw["bias"].detach().clone().requires_grad_()
        leaves.append(kw["bias"])
    tensors, options = split_keywords(**kw)
    out = fn(*leaves[:3], tensors, options)
    out.backward(grad_out)
    return out.detach(), [x.grad for x in leaves]


@pytest.mark.parametrize("case", SUPPORTED)
def test_matches_reference_forward_and_gradients(case):
    gen = torch.Generator().manual_seed(SUPPORTED.index(case))
    q, k, v, kw = CASES[case].inputs(gen, SHAPE)
    grad_out = torch.randn(q.shape[:-1] + (v.shape[-1],), generator=gen).to(v.dtype)
    ref_out, ref_grads = _grads(reference.binary_attention, q, k, v, kw, grad_out)
    out, grads = _grads(sdpa.binary_attention, q, k, v, kw, grad_out)
    tol = dict(atol=2e-2, rtol=2e-2) if q.dtype == torch.float16 else dict(atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(out, ref_out, **tol)
    for name, got, want in zip(("q", "k", "v", "bias"), grads, ref_grads):
        assert got is not None and torch.isfinite(got).all(), name
        torch.testing.assert_close(got, want, **tol, msg=lambda m: f"d{name}: {m}")


def test_fully_masked_rows_give_zeros_and_finite_gradients():
    gen = torch.Generator().manual_seed(3)
    q, k, v, kw = CASES["bool_mask"].inputs(gen, SHAPE)
    kw["attn_mask"][1, 0, 7] = False
    grad_out = torch.ones(q.shape[:-1] + (v.shape[-1],))
    out, grads = _grads(sdpa.binary_attention, q, k, v, kw, grad_out)
    assert out[0, :, 3].abs().max() == 0 and out[1, :, 7].abs().max() == 0
    _, ref_grads = _grads(reference.binary_attention, q, k, v, kw, grad_out)
    for got, want in zip(grads, ref_grads):   # dq of a dead row: only the mean|q| term
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)


def test_nan_input_gives_nan_output_of_its_head():
    q, k, v = (torch.randn(1, 2, 9, 32) for _ in range(3))
    k[0, 1, 4, 5] = float("nan")
    tensors, options = split_keywords()
    out = sdpa.binary_attention(q, k, v, tensors, options)
    assert torch.isnan(out[0, 1]).all() and torch.isfinite(out[0, 0]).all()


@pytest.mark.parametrize("case", UNSUPPORTED)
def test_unsupported_options_are_named(case):
    q, k, v, kw = CASES[case].inputs(torch.Generator().manual_seed(0), SHAPE)
    tensors, options = split_keywords(**kw)
    reason = sdpa.unsupported(q, tensors, options)
    assert reason and any(word in reason for word in ("top_n", "pv_bits", "soft_cap", "sinks"))


def test_cpu_calls_do_not_take_it():
    q, k, v = (torch.randn(1, 2, 9, 32, requires_grad=True) for _ in range(3))
    tensors, options = split_keywords()
    assert not sdpa.takes(q, k, v, tensors, options)  # CPU: the TVM kernels


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _cuda_inputs(shape=(2, 4, 300, 64), dtype=torch.bfloat16, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(shape, generator=gen, device="cuda", dtype=dtype).requires_grad_()
            for _ in range(3)]


@cuda
@pytest.mark.parametrize("case", ["plain", "gqa", "causal", "bool_mask", "float_mask_bias",
                                  "relpos_table", "static", "key_padding"])
def test_cuda_training_call_takes_the_path(case):
    gen = torch.Generator(device="cuda").manual_seed(1)
    q, k, v, kw = CASES[case].inputs(gen, Shape(n_q=129, n_k=129, head_dim=64),
                                     dtype=torch.bfloat16)
    grad_out = torch.randn(q.shape[:-1] + (v.shape[-1],), device="cuda").to(v.dtype)

    def public(q, k, v, tensors, options):
        return ops.binary_attention_with(q, k, v, tensors, options)

    out, grads = _grads(public, q, k, v, kw, grad_out)
    assert ops.kernel_report()["binary_attention/cuda"] == sdpa.NAME
    ref_out, ref_grads = _grads(reference.binary_attention, q.float(), k.float(), v.float(),
                                kw, grad_out.float())
    torch.testing.assert_close(out.float(), ref_out, atol=3e-2, rtol=3e-2)
    for name, got, want in zip(("q", "k", "v", "bias"), grads, ref_grads):
        scale = want.abs().max().clamp_min(1e-6)
        assert (got.float() - want).abs().max() / scale < 4e-2, name


@cuda
def test_cuda_training_step_makes_no_host_sync():
    q, k, v = _cuda_inputs()
    ops.binary_attention(q, k, v).sum().backward()   # warm-up (lazy init may sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ops.binary_attention(q, k, v).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@cuda
def test_cuda_extra_memory_is_linear_in_n():
    """fwd+bwd at N = 8192 costs no more than 10 % above SDPA's own fwd+bwd (an N×N float32
    tensor would be 4 GiB here)."""
    def peak(fn):
        q, k, v = _cuda_inputs((1, 8, 8192, 64))
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(q, k, v).sum().backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    ours = peak(lambda q, k, v: ops.binary_attention(q, k, v))
    theirs = peak(torch.nn.functional.scaled_dot_product_attention)
    assert ours <= 1.1 * theirs + 64 * 2**20, (ours, theirs)


@cuda
def test_cuda_reference_forced_keeps_the_custom_op():
    q, k, v = _cuda_inputs((1, 2, 64, 64))
    with dispatch.reference_only():
        ops.binary_attention(q, k, v).sum().backward()
        assert ops.kernel_report()["binary_attention/cuda"] == "reference (forced)"


@pytest.mark.parametrize("case", ["plain", "gqa", "bool_mask", "relpos_table", "head_bias"])
def test_compiles_without_graph_break(case):
    """Inductor takes the path whole (a compiled training step on CUDA traces it)."""
    gen = torch.Generator().manual_seed(5)
    q, k, v, kw = CASES[case].inputs(gen, SHAPE)
    tensors, options = split_keywords(**kw)
    compiled = torch.compile(lambda q, k, v: sdpa.binary_attention(q, k, v, tensors, options),
                             fullgraph=True)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    ref_leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out = compiled(*leaves)
    ref = sdpa.binary_attention(*ref_leaves, tensors, options)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    out.square().sum().backward()
    ref.square().sum().backward()
    for got, want in zip(leaves, ref_leaves):
        torch.testing.assert_close(got.grad, want.grad, atol=1e-4, rtol=1e-4)
