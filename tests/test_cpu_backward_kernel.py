"""The CPU backward kernel (TVM LLVM) against the reference VJP: every option case the kernel
covers, odd N and D, GQA, causal, masks, dense biases broadcast every way, the three scale
modes, half inputs; that the kernel ran (``kernel_report``); that what it does not cover falls
back with its reason; a training step of a binarized ViT gives the reference's gradients.

Gradients come through the op's autograd (``loss.backward()``), the kernel path by default (with
δ = rowsum(dO∘O) from the saved output, checked to reach the kernel) and the reference inside
``dispatch.reference_only()``; direct calls of the backward op with and without δ agree. Builds
go to a per-module cache directory.
"""
from __future__ import annotations

import copy
import warnings
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import binattn
from binattn import ops
from binattn.models import digits_vit
from binattn.ops import dispatch, options, reference
from binattn.tvm_kernels.cache import KernelCache
from binattn.tvm_kernels.cpu import backward_dispatch, build as cpu_build

from .op_cases import CASES, Shape, randn

OP = "binary_attention_backward/cpu"
SHAPE = Shape(batch=2, heads=2, kv_heads=2, n_q=45, n_k=61, head_dim=64)
#: cases the kernel refuses, with (part of) the reason it gives
REFUSED = {"pv8": "pv_bits=8", "pv8_causal_gqa_bias": "pv_bits=8",
           "relpos_table": "bias_index"}


@pytest.fixture(scope="module", autouse=True)
def module_cache(tmp_path_factory):
    cpu_build.use_cache(KernelCache(tmp_path_factory.mktemp("kernels")))
    yield
    cpu_build.use_cache(None)


def grads(q, k, v, grad, kwargs, reference: bool) -> list[torch.Tensor]:
    """Gradients of q, k, v and of every float tensor keyword that needs one (bias); on the
    kernel path, asserts that every kernel call got δ from the autograd formula."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    kw = dict(kwargs)
    if kw.get("bias") is not None:
        kw["bias"] = kw["bias"].detach().clone().requires_grad_(True)
        leaves.append(kw["bias"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if reference:
            with dispatch.reference_only():
                ops.binary_attention(*leaves[:3], **kw).backward(grad)
        else:
            with mock.patch.object(backward_dispatch, "_run_kernel",
                                   wraps=backward_dispatch._run_kernel) as spy:
                ops.binary_attention(*leaves[:3], **kw).backward(grad)
            assert all(call.args[-1] is not None for call in spy.call_args_list)
    return [t.grad for t in leaves]


def check(q, k, v, kwargs, seed: int = 0, kernel: bool = True) -> str:
    """The kernel's (or fallback's) gradients equal the reference VJP's; returns the path
    ``kernel_report`` named."""
    out_shape = (*q.shape[:-1], v.shape[-1])
    grad = torch.randn(out_shape, generator=torch.Generator().manual_seed(seed)).to(v.dtype)
    got = grads(q, k, v, grad, kwargs, reference=False)
    path = dispatch.kernel_report()[OP]
    assert path.startswith("tvm-llvm") == kernel, path
    want = grads(q, k, v, grad, kwargs, reference=True)
    assert_grads_close(got, want, v.dtype)
    return path


def assert_grads_close(got, want, dtype: torch.dtype) -> None:
    """dq, dk, dv (, dbias) close, relative to each one's size. dq, dk and dbias are sums of
    dS = P∘(dP − δ), which cancel to 0 (one key, a bias constant over the keys): there the
    kernel's dP and its δ (from the output) are two float32 roundings of one sum, so the floor
    is float32 rounding of dv's size (dv does not cancel)."""
    half = dtype != torch.float32
    floor = 1e-5 * max(want[2].float().abs().max().item(), 1.0)
    for name, a, b in zip(("dq", "dk", "dv", "dbias"), got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        scale = b.float().abs().max().item() + 1e-6
        tol = (2e-2 if dtype == torch.bfloat16 else 5e-3) if half else 1e-4
        torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=max(tol * scale, floor),
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.op_cases(kernel="cpu")
def test_backward_kernel_matches_reference(op_case, case_gen):
    q, k, v, kwargs = CASES[op_case].inputs(case_gen, SHAPE)
    path = check(q, k, v, kwargs, kernel=op_case not in REFUSED)
    if op_case in REFUSED:
        assert REFUSED[op_case] in path


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", ["plain", "gqa_causal", "bool_mask_bias"])
def test_half_inputs(dtype, case):
    q, k, v, kwargs = CASES[case].inputs(torch.Generator().manual_seed(3), SHAPE, dtype=dtype)
    check(q, k, v, kwargs)


@settings(max_examples=8, deadline=None)
@given(n_q=st.sampled_from([1, 7, 65, 130]), n_k=st.sampled_from([1, 7, 65, 130]),
       head_dim=st.sampled_from([24, 64, 72]), value_dim=st.sampled_from([8, 24, 64]),
       causal=st.booleans(), kv_heads=st.sampled_from([1, 2]),
       scale_mode=st.sampled_from(["mean_abs", "none"]), seed=st.integers(0, 2**16))
def test_random_shapes(n_q, n_k, head_dim, value_dim, causal, kv_heads, scale_mode, seed):
    s = Shape(batch=1, heads=2, kv_heads=kv_heads, n_q=n_q, n_k=n_k, head_dim=head_dim,
              value_dim=value_dim)
    q, k, v, kwargs = CASES["plain"].with_options(is_causal=causal, scale_mode=scale_mode).inputs(
        torch.Generator().manual_seed(seed), s)
    check(q, k, v, kwargs, seed)


BIAS_SHAPES = [(45, 61), (2, 45, 61), (1, 2, 45, 61), (2, 1, 45, 61), (2, 2, 45, 61),
               (2, 2, 1, 61), (1, 1, 1, 61), (1, 2, 1, 1), (2, 2, 45, 1)]


@pytest.mark.parametrize("bias_shape", BIAS_SHAPES)
def test_bias_gradient_over_its_broadcast_dims(bias_shape):
    """dS summed over the bias's broadcast dims; a bias shared by units (batch / heads) gets
    per-chunk copies, never a [B, H, N, N] tensor."""
    gen = torch.Generator().manual_seed(sum(bias_shape))
    q, k, v, kwargs = CASES["bool_mask"].inputs(gen, SHAPE)
    kwargs["bias"] = randn(gen, *bias_shape)
    check(q, k, v, kwargs)


def test_bias_gradient_with_many_units_and_causal():
    """Enough (b, h) units that chunks hold several of them."""
    s = Shape(batch=3, heads=4, kv_heads=2, n_q=70, n_k=70, head_dim=40)
    gen = torch.Generator().manual_seed(9)
    q, k, v, kwargs = CASES["plain"].with_options(is_causal=True).inputs(gen, s)
    kwargs["bias"] = randn(gen, 70, 70)
    check(q, k, v, kwargs)


@pytest.mark.op_cases(kernel="none")
def test_unsupported_options_fall_back_with_reason(op_case, case_gen):
    q, k, v, kwargs = CASES[op_case].inputs(case_gen, SHAPE, n_q=8, n_k=8)
    grad = torch.randn(*q.shape[:-1], v.shape[-1], generator=case_gen)
    grads(q, k, v, grad, kwargs, reference=False)
    path = dispatch.kernel_report()[OP]
    assert path.startswith("reference (") and "no backward kernel" in path, path


def test_float64_falls_back_with_reason():
    q, k, v, kwargs = CASES["plain"].inputs(torch.Generator().manual_seed(4), SHAPE,
                                            dtype=torch.float64, n_q=8, n_k=8)
    grads(q, k, v, torch.randn(2, 2, 8, 64, dtype=torch.float64), kwargs, reference=False)
    assert "float64" in dispatch.kernel_report()[OP]


@pytest.mark.parametrize("where", ["q", "k", "bias"])
def test_nan_gives_nan_gradients_as_the_reference(where):
    """The backward op itself (no eager input check in front of it): a NaN in q, k or the bias
    gives NaN exactly where the reference VJP gives it."""
    gen = torch.Generator().manual_seed(5)
    q, k, v, kwargs = CASES["dense_bias"].inputs(gen, SHAPE)
    {"q": q, "k": k, "bias": kwargs["bias"]}[where][1, 1, 5] = float("nan")
    tensors, opts = options.split_keywords(**kwargs)
    args = (torch.randn(2, 2, 45, 64, generator=gen), q, k, v,
            *options.op_args(tensors, opts))
    got = torch.ops.binattn.binary_attention_backward(*args)
    assert dispatch.kernel_report()[OP].startswith("tvm-llvm")
    with dispatch.reference_only():
        want = torch.ops.binattn.binary_attention_backward(*args)
    for a, b in zip(got[:3], want[:3]):
        assert torch.isnan(b).any() and torch.equal(torch.isnan(a), torch.isnan(b))


def test_training_step_of_a_binarized_vit_matches_the_reference():
    """One loss.backward() of a small binarized ViT (dense learned bias, mean|x| scales) on CPU:
    the same parameter gradients through the kernel as through the reference VJP."""
    torch.manual_seed(0)
    fp = digits_vit(dim=32, depth=2, heads=2).eval()
    model = binattn.binarize(copy.deepcopy(fp), fp.example_inputs(8),
                             binattn.BinarizeConfig(bias="dense"))
    x = fp.example_inputs(8)[0]
    labels = torch.arange(8) % 10

    def step(reference: bool) -> dict[str, torch.Tensor]:
        model.zero_grad()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if reference:
                with dispatch.reference_only():
                    torch.nn.functional.cross_entropy(model(x), labels).backward()
            else:
                torch.nn.functional.cross_entropy(model(x), labels).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    got = step(reference=False)
    assert dispatch.kernel_report()[OP].startswith("tvm-llvm")
    want = step(reference=True)
    assert got.keys() == want.keys() and any("bias" in n for n in got)
    for name in want:
        scale = want[name].abs().max().item() + 1e-6
        torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=1e-4 * scale,
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("case", ["plain", "gqa_causal", "bool_mask_bias"])
def test_direct_backward_op_with_and_without_delta(case):
    """The backward op called directly: without δ (the kernel forms it from dP) and with δ =
    rowsum(grad ∘ out) (the autograd formula's), both through the kernel, both the reference
    VJP's gradients."""
    gen = torch.Generator().manual_seed(11)
    q, k, v, kwargs = CASES[case].inputs(gen, SHAPE)
    tensors, opts = options.split_keywords(**kwargs)
    grad = torch.randn(*q.shape[:-1], v.shape[-1], generator=gen)
    args = (grad, q, k, v, *options.op_args(tensors, opts))
    out = torch.ops.binattn.binary_attention(q, k, v, *args[4:])
    delta = reference.output_row_dot(grad, out)
    with dispatch.reference_only():
        want = torch.ops.binattn.binary_attention_backward(*args)
    for extra in ((), (delta,)):
        with mock.patch.object(backward_dispatch, "_run_kernel",
                               wraps=backward_dispatch._run_kernel) as spy:
            got = torch.ops.binattn.binary_attention_backward(*args, *extra)
        assert dispatch.kernel_report()[OP].startswith("tvm-llvm")
        assert (spy.call_args.args[-1] is None) == (not extra)
        n = 3 if tensors.bias is None else 4   # dq, dk, dv (, dbias)
        assert_grads_close(got[:n], want[:n], v.dtype)
