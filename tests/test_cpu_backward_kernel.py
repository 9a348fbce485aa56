"""The CPU backward kernel (TVM LLVM) against the reference VJP: every option case the kernel
covers, odd N and D, GQA, causal, masks, dense biases broadcast every way, a relative-position
bias table (gathered, its gradient scattered back onto the table's rows), the three scale
modes, half inputs; that the kernel ran (``kernel_report``); that what it does not cover falls
back with its reason; a training step of a binarized ViT gives the reference's gradients.

Gradients come through the op's autograd (``loss.backward()``), the kernel path by default (with
δ = rowsum(dO∘O) from the saved output, checked to reach the kernel) and the reference inside
``dispatch.reference_only()``; direct calls of the backward op with and without δ agree. Builds
go to a per-module cache directory.

The STE epilogue kernel (``cpu.backward_ste``, through ``backward_dispatch.input_grad``) is
checked on its own against ``reference._input_grad``: bit for bit (every scale mode, odd N and
D, strided and half x, GQA, NaN / ±Inf, |x| at the clip, ±0; mean|x|'s sum made exact by
dyadic gradients), within float32 rounding for random gradients; the kernel path's scales
(from the sign-pack sums) against ``reference.backward_inputs``'; a failed build of the
epilogue runs it in torch, says so, and gives the same gradients.
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
from binattn.tvm_kernels.cpu import dispatch as cpu_forward

from .op_cases import CASES, Shape, randn

OP = "binary_attention_backward/cpu"
SHAPE = Shape(batch=2, heads=2, kv_heads=2, n_q=45, n_k=61, head_dim=64)
#: cases the kernel refuses, with (part of) the reason it gives
REFUSED = {"pv8": "pv_bits=8", "pv8_causal_gqa_bias": "pv_bits=8"}


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


# --------------------------------------------------------------------------- STE epilogue
MODES = ["mean_abs", "static", "none"]
LAYOUTS = ["contiguous", "transposed", "padded_d_hat", "broadcast_heads"]


def ste_case(mode: str, layout: str = "contiguous", dtype: torch.dtype = torch.float32,
             batch: int = 2, q_heads: int = 4, x_heads: int = 2, n: int = 33,
             head_dim: int = 72, clip: float = 1.0, dyadic: bool = True, seed: int = 0):
    """``(x, s, d_hat, options)`` for one STE call: x ``[B, x_heads, N, D]`` in ``layout`` and
    ``dtype`` with special values planted (±clip exactly, ±0, NaN, ±Inf; for static, ±clip·s
    exactly in a (b, h) whose scale is 2); s a positive ``[B, Hq, 1, 1]`` (powers of two in
    (0, 0)); d_hat ``[B, Hq, N, D]`` float32, multiples of 1/64 when ``dyadic`` (every sum of
    them exact in float32, so mean|x|'s ds does not depend on the order of the sum)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, x_heads, n, head_dim)
    if layout == "transposed":   # [B, N, H, D] memory, as a fused projection's view
        x = randn(gen, batch, n, x_heads, head_dim).transpose(1, 2)
    elif layout == "broadcast_heads":   # stride 0 over heads
        x = randn(gen, batch, 1, n, head_dim).expand(shape)
    else:
        x = randn(gen, *shape)
    x = x.to(dtype)
    s = torch.rand(batch, q_heads, 1, 1, generator=gen) + 0.5
    s[0, 0] = 2.0
    special = torch.tensor([clip, -clip, 0.0, -0.0, clip * 2.0, -clip * 2.0, 3 * clip,
                            float("inf"), float("-inf")], dtype=dtype)
    if layout != "broadcast_heads":   # (a view with stride 0 cannot take one-element writes)
        x[0, 0, 0, :special.numel()] = special[:head_dim]
        x[-1, -1, -1, -1] = float("nan")
    if dyadic:
        d_hat = torch.randint(-64, 65, (batch, q_heads, n, head_dim), generator=gen) / 64.0
    else:
        d_hat = randn(gen, batch, q_heads, n, head_dim)
    if layout == "padded_d_hat":   # the kernel's padded output, sliced
        padded = torch.zeros(batch, q_heads, n + 31, head_dim + 8)
        d_hat = padded[..., :n, :head_dim].copy_(d_hat)
    return x, s, d_hat, options.AttentionOptions(scale_mode=mode, ste_clip=clip)


def ste_reference(x, s, d_hat, opts) -> torch.Tensor:
    """``reference._input_grad`` as the reference VJP runs it (x in float32, k's heads
    expanded to the query heads, x / s for static)."""
    xf = reference.expand_kv_heads(x.to(torch.float32), d_hat.shape[-3])
    b_in = reference.binarizer_input(xf, s, opts.scale_mode)
    return reference._input_grad(xf, s, b_in, d_hat.clone(), opts, torch.empty_like(xf))


def ste_kernel(x, s, d_hat, opts) -> torch.Tensor:
    """The STE kernel (through ``backward_dispatch.input_grad``), checked to have run."""
    with mock.patch.object(backward_dispatch, "ste_kernel",
                           wraps=backward_dispatch.ste_kernel) as spy:
        got = backward_dispatch.input_grad(x, s, d_hat.clone(), opts)
    assert spy.call_count == 2   # try_build's build, then the call
    return got


def assert_bitwise(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", MODES)
def test_ste_kernel_is_the_reference_bit_for_bit(mode, layout):
    """Odd N and D (33, 72: a vector tail), GQA (Hq=4 over 2 x heads), |x| at the clip, ±0,
    NaN and ±Inf in x; x contiguous, a transposed view, stride 0 over heads; d_hat contiguous
    (written in place) or a padded buffer's slice (a new tensor)."""
    x, s, d_hat, opts = ste_case(mode, layout)
    got = ste_kernel(x, s, d_hat, opts)
    want = ste_reference(x, s, d_hat, opts)
    assert_bitwise(got, want)
    assert got.is_contiguous()
    if layout != "broadcast_heads":
        # torch: b(NaN) = +1, sign(NaN) = 0, so NaN reaches the gradient only through s
        assert not torch.isnan(want).any()
        assert (want == 0).any() and (want != 0).any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
def test_ste_kernel_reads_half_inputs(mode, dtype):
    x, s, d_hat, opts = ste_case(mode, dtype=dtype, seed=1)
    assert_bitwise(ste_kernel(x, s, d_hat, opts), ste_reference(x, s, d_hat, opts))


@pytest.mark.parametrize("clip", [0.5, 2.0])
@pytest.mark.parametrize("mode", MODES)
def test_ste_kernel_clip_and_shapes(mode, clip):
    """Another clip; D a multiple of 16 (no tail) and below 16 (only the tail); one head."""
    for n, head_dim, q_heads in ((64, 64, 1), (5, 7, 2), (1, 16, 2)):
        x, s, d_hat, opts = ste_case(mode, n=n, head_dim=head_dim, q_heads=q_heads,
                                     x_heads=1, clip=clip, seed=n)
        assert_bitwise(ste_kernel(x, s, d_hat, opts), ste_reference(x, s, d_hat, opts))


@pytest.mark.parametrize("mode", MODES)
def test_ste_kernel_random_gradients(mode):
    """Random (non-dyadic) d_hat, finite x: static and none still bit for bit; mean|x| within
    float32 rounding of ds = Σ b(x)·d_hat (summed in another order than torch's)."""
    x, s, d_hat, opts = ste_case(mode, n=130, head_dim=64, dyadic=False, seed=2)
    x = torch.nan_to_num(x, nan=0.5, posinf=4.0, neginf=-4.0)
    got, want = ste_kernel(x, s, d_hat, opts), ste_reference(x, s, d_hat, opts)
    if mode == "mean_abs":
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * want.abs().max().item())
        assert not torch.equal(want, d_hat * (x.abs() <= 1).float().repeat_interleave(2, 1) * s)
    else:
        assert_bitwise(got, want)


@pytest.mark.parametrize("mode", MODES)
def test_ste_kernel_with_nan_scale_gives_nan_where_the_reference_does(mode):
    """The scales as the backward computes them (``qk_scale``): a NaN in one (b, h) of x makes
    that (b, h)'s s NaN; the gradient is NaN exactly where the reference's is."""
    x, _, d_hat, opts = ste_case(mode, n=9, head_dim=40, q_heads=2, seed=3)
    x = torch.nan_to_num(x, nan=0.25, posinf=3.0, neginf=-3.0)
    x[1, 1, 4, 7] = float("nan")
    xf = reference.expand_kv_heads(x, 2)
    s = reference.qk_scale(xf, mode, torch.full((1, 2, 1, 1), 0.8))
    assert torch.isnan(s).sum() == 1
    got, want = ste_kernel(x, s, d_hat, opts), ste_reference(x, s, d_hat, opts)
    assert_bitwise(got, want)
    assert torch.isnan(want).any() == (mode != "static")


@pytest.mark.parametrize("mode", MODES)
def test_kernel_path_scales_are_the_references(mode):
    """``operands``' s_q, s_k (from the sign-pack kernel's Σ|x| per row) against
    ``reference.backward_inputs``': GQA, a per-kv-head static k scale, NaN in one (b, h) of k
    (NaN in its query heads' s_k, as there)."""
    q, k, v, kwargs = CASES["static" if mode == "static" else "plain"].inputs(
        torch.Generator().manual_seed(6), Shape(batch=2, heads=4, kv_heads=2, n_q=33, n_k=47,
                                                head_dim=72))
    k[1, 0, 3, 3] = float("nan")
    tensors, opts = options.split_keywords(**{**kwargs, "scale_mode": mode})
    got = backward_dispatch.operands(q, k, tensors, opts)
    want = reference.backward_inputs(q, k, v, tensors, opts)
    for a, b in ((got.s_q, want.s_q), (got.s_k, want.s_k)):
        assert a.shape == b.shape == (2, 4, 1, 1)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0, equal_nan=True)
    assert torch.isnan(got.s_k[1, :2]).all() and not torch.isnan(got.s_k[0]).any()


def test_ste_build_failure_runs_the_epilogue_in_torch():
    """A failed build of the STE kernel: the backward kernel still runs, the epilogue runs in
    torch (a warning and ``kernel_report`` say so), the gradients are the reference's."""
    gen = torch.Generator().manual_seed(7)
    q, k, v, kwargs = CASES["gqa_causal"].inputs(gen, SHAPE)
    tensors, opts = options.split_keywords(**kwargs)
    args = (torch.randn(*q.shape[:-1], v.shape[-1], generator=gen), q, k, v,
            *options.op_args(tensors, opts))

    def broken(*_):
        raise cpu_build.KernelBuildError("attention_backward_ste: simulated")

    with mock.patch.dict(cpu_forward._failed), \
            mock.patch.object(backward_dispatch, "_warned", set()), \
            mock.patch.object(backward_dispatch, "ste_kernel", broken), \
            pytest.warns(RuntimeWarning, match="STE epilogue in torch: build failed"):
        got = torch.ops.binattn.binary_attention_backward(*args)
        path = dispatch.kernel_report()[OP]
    assert path.startswith(backward_dispatch.NAME) and "simulated" in path, path
    with dispatch.reference_only():
        want = torch.ops.binattn.binary_attention_backward(*args)
    assert_grads_close(got[:3], want[:3], v.dtype)
    torch.ops.binattn.binary_attention_backward(*args)
    assert dispatch.kernel_report()[OP] == backward_dispatch.NAME


def test_prepare_build_failure_makes_the_backward_fall_back_with_the_reason():
    """The backward packs q and k through the forward's ``prepare`` kernel: if that kernel does
    not build, the backward runs the reference and says why (it must not raise)."""
    gen = torch.Generator().manual_seed(8)
    q, k, v, kwargs = CASES["plain"].inputs(gen, SHAPE)
    tensors, opts = options.split_keywords(**kwargs)
    args = (torch.randn(*q.shape[:-1], v.shape[-1], generator=gen), q, k, v,
            *options.op_args(tensors, opts))

    def broken(*_):
        raise cpu_build.KernelBuildError("prepare: simulated")

    with mock.patch.dict(cpu_forward._failed), \
            mock.patch.object(cpu_build, "prepare_kernel", broken), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        got = torch.ops.binattn.binary_attention_backward(*args)
        path = dispatch.kernel_report()[OP]
    assert path.startswith("reference (") and "prepare: simulated" in path, path
    with dispatch.reference_only():
        want = torch.ops.binattn.binary_attention_backward(*args)
    assert_grads_close(got[:3], want[:3], v.dtype)
