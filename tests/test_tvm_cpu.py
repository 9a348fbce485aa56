"""TVM CPU kernels against the reference: exact integer scores, allclose attention, fallbacks.

Every kernel output is poisoned (NaN / sentinel) before the call so unwritten elements fail, and
inputs are fresh random tensors. Builds go to a per-session cache directory.
"""
import dataclasses
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tvm  # the TVM compiler is a test dependency: a missing install must fail, not skip

from binattn import ops  # noqa: E402
from binattn.ops import dispatch, reference  # noqa: E402
from binattn.tvm_kernels.cpu import (build as cpu_build, dispatch as cpu_dispatch,
                                     kernels as cpu_kernels)  # noqa: E402
from binattn.tvm_kernels.cache import KernelCache  # noqa: E402
from binattn.tvm_kernels.cpu.target import cpu_features  # noqa: E402

from .op_cases import CASES, Shape, dead_rows  # noqa: E402


pytestmark = pytest.mark.usefixtures("tvm_cpu_cache")


def reference_attention(*args, **kwargs):
    with dispatch.reference_only():
        return ops.binary_attention(*args, **kwargs)


def assert_kernel_ran(op: str) -> None:
    path = dispatch.kernel_report()[f"{op}/cpu"]
    assert path.startswith("tvm-llvm"), path


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 40), head_dim=st.integers(1, 130), seed=st.integers(0, 2**16))
def test_sign_pack_matches_reference_exactly(rows, head_dim, seed):
    x = torch.randn(rows, head_dim, generator=torch.Generator().manual_seed(seed))
    x[0, 0] = 0.0  # sign(0) = +1
    bits, pops, abs_sum = cpu_dispatch.pack_rows(x)
    ref_bits, ref_pops = reference.sign_pack(x)
    assert torch.equal(bits, ref_bits) and torch.equal(pops, ref_pops)
    torch.testing.assert_close(abs_sum, x.abs().sum(-1))
    words, popcounts = ops.sign_pack(x.reshape(1, rows, head_dim))
    assert torch.equal(words[0], ref_bits) and torch.equal(popcounts[0], ref_pops)
    assert_kernel_ran("sign_pack")


@settings(max_examples=25, deadline=None)
@given(n_q=st.integers(1, 70), n_k=st.integers(1, 70), head_dim=st.integers(1, 100),
       batch=st.sampled_from([(), (2,), (2, 3)]), seed=st.integers(0, 2**16))
def test_popcount_scores_exact_on_random_shapes(n_q, n_k, head_dim, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    q_bits, _ = reference.sign_pack(torch.randn(*batch, n_q, head_dim, generator=gen))
    k_bits, _ = reference.sign_pack(torch.randn(*batch, n_k, head_dim, generator=gen))
    scores = ops.popcount_scores(q_bits, k_bits, head_dim)
    assert torch.equal(scores, reference.popcount_scores(q_bits, k_bits, head_dim))
    assert_kernel_ran("popcount_scores")


def test_popcount_scores_broadcast_batch_and_large_exact_kernel():
    gen = torch.Generator().manual_seed(1)
    q_bits, _ = reference.sign_pack(torch.randn(2, 1, 1030, 64, generator=gen))
    k_bits, _ = reference.sign_pack(torch.randn(1, 3, 1025, 64, generator=gen))
    scores = ops.popcount_scores(q_bits, k_bits, 64)  # ≥ 2^20 outputs: the exact-shape kernel
    assert scores.shape == (2, 3, 1030, 1025)
    assert torch.equal(scores, reference.popcount_scores(q_bits, k_bits, 64))


CPU_SHAPE = Shape(batch=2, heads=2, kv_heads=2, n_q=45, n_k=61, head_dim=64)
SIZES = {f.name for f in dataclasses.fields(Shape)}


def make_inputs(seed, case="plain", dtype=torch.float32, **sizes_and_options):
    """Catalogue case ``case`` over the CPU base shape, with sizes and options changed."""
    sizes = {k: v for k, v in sizes_and_options.items() if k in SIZES}
    options = {k: v for k, v in sizes_and_options.items() if k not in SIZES}
    return CASES[case].with_options(**options).inputs(torch.Generator().manual_seed(seed),
                                                      CPU_SHAPE, dtype=dtype, **sizes)


@pytest.mark.op_cases(kernel="cpu")
def test_fused_attention_matches_reference(op_case, case_gen):
    q, k, v, kwargs = CASES[op_case].inputs(case_gen, CPU_SHAPE)
    out = ops.binary_attention(q, k, v, **kwargs)
    assert_kernel_ran("binary_attention")
    ref = reference_attention(q, k, v, **kwargs)
    assert out.dtype == v.dtype and out.shape == ref.shape
    tol = 2e-2 if v.dtype == torch.float16 else 1e-5
    # 8-bit P: a probability on a rounding boundary may land one u8 level off
    atol = 3 * v.abs().max().item() / 255 if kwargs.get("pv_bits") == 8 else tol
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=atol)
    dead = dead_rows(kwargs, out.shape)
    if dead is not None:
        assert not out[dead].any()


@settings(max_examples=12, deadline=None)
@given(n_q=st.integers(1, 80), n_k=st.integers(1, 150), head_dim=st.sampled_from([1, 31, 64, 65]),
       value_dim=st.sampled_from([8, 64]), causal=st.booleans(), seed=st.integers(0, 2**16))
def test_fused_attention_random_shapes(n_q, n_k, head_dim, value_dim, causal, seed):
    q, k, v, kwargs = make_inputs(seed, batch=1, heads=2, kv_heads=1, n_q=n_q, n_k=n_k,
                                  head_dim=head_dim, value_dim=value_dim, is_causal=causal)
    out = ops.binary_attention(q, k, v, **kwargs)
    assert_kernel_ran("binary_attention")
    torch.testing.assert_close(out, reference_attention(q, k, v, **kwargs), rtol=1e-5, atol=1e-5)


HAS_LUT_CPU = cpu_kernels.LUT_FEATURES <= cpu_features()


def pv8_tag(q, v, kwargs) -> str:
    """Workload tag the dispatcher builds for this 8-bit call ('…_pv8lut': the table kernel)."""
    bias = kwargs.get("bias")
    add = cpu_dispatch._add_shape(None if bias is None else bias.shape, kwargs.get("attn_mask"))
    return cpu_dispatch._workload(q, v, add, kwargs.get("is_causal", False), 8).tag()


def assert_pv8_close(out, ref, v):
    """8-bit P: a probability on a rounding boundary may land one u8 level off."""
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=3 * v.abs().max().item() / 255)


@settings(max_examples=10, deadline=None)
@given(n_q=st.integers(1, 90), n_k=st.integers(1, 300), head_dim=st.sampled_from([31, 64, 100]),
       value_dim=st.sampled_from([17, 64]), causal=st.booleans(), kv_heads=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**16))
def test_pv8_table_kernel_random_shapes(n_q, n_k, head_dim, value_dim, causal, kv_heads, seed):
    """The table kernel (no bias/mask) against the reference: odd D, N, Dv, causal, GQA."""
    q, k, v, kwargs = make_inputs(seed, batch=2, heads=2, kv_heads=kv_heads, n_q=n_q, n_k=n_k,
                                  head_dim=head_dim, value_dim=value_dim, is_causal=causal,
                                  pv_bits=8)
    assert pv8_tag(q, v, kwargs).endswith("_pv8lut") == HAS_LUT_CPU
    out = ops.binary_attention(q, k, v, **kwargs)
    assert_kernel_ran("binary_attention")
    assert_pv8_close(out, reference_attention(q, k, v, **kwargs), v)


@pytest.mark.parametrize("scale", [0.0, 1e-4, 3.0])
def test_pv8_table_kernel_any_coefficient(scale):
    """Zero (uniform P: an all-zero q under mean|x|; a scale must be > 0), tiny (P ≈ 255/N
    everywhere) and large (one-hot P) coefficients; 600 keys so rows have both unmasked and
    masked (causal) key tiles."""
    mode = "mean_abs" if scale == 0.0 else "none"
    q, k, v, kwargs = make_inputs(seed=11, batch=1, heads=2, kv_heads=1, n_q=300, n_k=600,
                                  scale_mode=mode, scale=scale or None, is_causal=True,
                                  pv_bits=8)
    if scale == 0.0:
        q = torch.zeros_like(q)
    out = ops.binary_attention(q, k, v, **kwargs)
    assert_kernel_ran("binary_attention")
    assert_pv8_close(out, reference_attention(q, k, v, **kwargs), v)


@pytest.mark.parametrize("head_dim,table", [(224, True), (225, False)])
def test_pv8_table_kernel_head_dim_limit(head_dim, table):
    """D ≤ 224 (7 words: a key's value fits a byte) runs the table kernel, wider D the
    two-pass kernel; both match the reference."""
    q, k, v, kwargs = make_inputs(seed=12, batch=1, heads=2, n_q=40, n_k=150, head_dim=head_dim,
                                  value_dim=64, pv_bits=8)
    assert pv8_tag(q, v, kwargs).endswith("_pv8lut") == (table and HAS_LUT_CPU)
    out = ops.binary_attention(q, k, v, **kwargs)
    assert_kernel_ran("binary_attention")
    assert_pv8_close(out, reference_attention(q, k, v, **kwargs), v)


@pytest.mark.parametrize("case", ["bool_mask", "dense_bias"])
def test_pv8_with_bias_or_mask_runs_the_two_pass_kernel(case):
    """Bias/mask values are not integers: the dispatcher keeps the two-pass kernel for them."""
    q, k, v, kwargs = make_inputs(13, case, n_q=50, n_k=140, pv_bits=8)
    assert pv8_tag(q, v, kwargs).endswith("_pv8")
    out = ops.binary_attention(q, k, v, **kwargs)
    assert_kernel_ran("binary_attention")
    assert_pv8_close(out, reference_attention(q, k, v, **kwargs), v)


def test_pv8_table_kernel_needs_vbmi_and_vnni():
    wl = cpu_kernels.AttentionWorkload(2, 64, pv8=True)
    assert cpu_kernels.pv8_uses_lut(wl, cpu_kernels.LUT_FEATURES)
    assert not cpu_kernels.pv8_uses_lut(wl, cpu_kernels.LUT_FEATURES - {"avx512vbmi"})
    fp32_pv = cpu_kernels.AttentionWorkload(2, 64)
    with_bias = cpu_kernels.AttentionWorkload(2, 64, False, (True,) * 3, True)
    too_wide = cpu_kernels.AttentionWorkload(8, 64, pv8=True)
    for other in (fp32_pv, with_bias, too_wide):
        assert not cpu_kernels.pv8_uses_lut(other, cpu_kernels.LUT_FEATURES)


@settings(max_examples=8, deadline=None)
@given(n=st.integers(1, 200), value_dim=st.sampled_from([16, 64]), seed=st.integers(0, 2**16))
def test_quantize_v_kernel_is_exact(n, value_dim, seed):
    """s8 V equals round(v·127/max|v|) (half to even, as the reference), keys interleaved by 4,
    padding keys zero; scales equal the reference's 1/(255·(inv + 1e-6))."""
    v = torch.randn(2, 3, n, value_dim, generator=torch.Generator().manual_seed(seed))
    v[0, 0, :, 0] = 0.25  # ties: max|v| = 127 makes the scale exactly 1: 30.5 → 30, 31.5 → 32
    v[0, 0, :3, 0] = torch.tensor([127.0, 30.5, 31.5])[:n]
    n4 = -(-n // 128) * 32
    v8 = torch.full((2, 3, n4, value_dim, 4), 99, dtype=torch.int8)
    vscale = torch.full((2, 3, value_dim), float("nan"))
    cpu_build.quantize_v_kernel(value_dim)(v, v8, vscale)
    inv = reference.v_inverse_step(v)
    keys = v8.transpose(-1, -2).reshape(2, 3, n4 * 4, value_dim)
    assert torch.equal(keys[:, :, :n], torch.round(v * inv).to(torch.int8))
    assert not keys[:, :, n:].any()
    assert torch.equal(vscale, (1.0 / (255 * (inv + 1e-6))).reshape(2, 3, value_dim))


def test_attention_in_output_is_written_everywhere():
    """Large enough for several q blocks and key tiles, with padding on both."""
    q, k, v, kwargs = make_inputs(seed=7, batch=1, heads=3, kv_heads=3, n_q=200, n_k=333)
    out = ops.binary_attention(q, k, v, **kwargs)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference_attention(q, k, v), rtol=1e-5, atol=1e-5)


@pytest.mark.op_cases(kernel="none")
def test_unsupported_options_fall_back_with_reason(op_case, case_gen):
    q, k, v, kwargs = CASES[op_case].inputs(case_gen, CPU_SHAPE, n_q=8, n_k=8)
    reason = ("soft, training-only" if kwargs.get("binarizer", "sign") != "sign"
              else "attention sinks / soft_cap" if "sinks" in kwargs or "soft_cap" in kwargs
              else "top_n is not built")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        out = ops.binary_attention(q, k, v, **kwargs)
    assert reason in dispatch.kernel_report()["binary_attention/cpu"]
    torch.testing.assert_close(out, reference_attention(q, k, v, **kwargs))


def test_float64_runs_reference():
    q, k, v, _ = make_inputs(seed=4, n_q=8, n_k=8, dtype=torch.float64)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        ops.binary_attention(q, k, v)
    assert "float64" in dispatch.kernel_report()["binary_attention/cpu"]


def test_build_failure_becomes_a_fallback_reason(monkeypatch):
    """A TVM build error must not raise: the op runs the reference and says why."""
    def broken(mod):
        raise tvm.error.InternalError("simulated LLVM failure")

    monkeypatch.setattr(cpu_build, "compile_module", broken)
    monkeypatch.setattr(cpu_dispatch, "_failed", {})
    monkeypatch.setattr(cpu_build, "_cache_override",
                        KernelCache(cpu_build.kernel_cache().root / "broken"))
    q, k, v, kwargs = make_inputs(seed=5, n_q=8, n_k=8, value_dim=48, is_causal=True)
    with pytest.warns(RuntimeWarning, match="build failed"):
        out = ops.binary_attention(q, k, v, **kwargs)
    torch.testing.assert_close(out, reference_attention(q, k, v, **kwargs))


def test_gradients_still_flow_through_the_op():
    q, k, v, _ = make_inputs(seed=6, n_q=16, n_k=16)
    q.requires_grad_(True)
    v.requires_grad_(True)
    ops.binary_attention(q, k, v).sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all() and v.grad.abs().sum() > 0


def test_mean_abs_scale_comes_from_the_pack_pass():
    x = torch.randn(2, 3, 10, 40)
    _, _, abs_sum = cpu_dispatch.pack_rows(x)
    s = abs_sum.sum(-1) / (10 * 40)
    torch.testing.assert_close(s[..., None, None], reference.qk_scale(x, "mean_abs", None))
    assert math.isfinite(float(s.sum()))


@pytest.mark.parametrize("scale_mode", ["mean_abs", "none", "static"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prepare_packs_q_and_k_and_computes_the_scales_of_the_reference(scale_mode, dtype):
    """One TVM call: q's and k's words (padded with zeros; k transposed), the magnitudes and the
    score multiplier as the reference defines them — GQA, strided views, odd N and D."""
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 9, 4, 72, generator=gen).to(dtype).transpose(1, 2)  # [2, 4, 9, 72] view
    k = torch.randn(2, 2, 11, 72, generator=gen).to(dtype)
    q[0, 0, 0, :2] = torch.tensor([0.0, -0.0], dtype=dtype)
    tensors = ops.AttentionTensors(q_scale=torch.rand(4, 1, 1) + 0.5,
                                   k_scale=torch.rand(2, 1, 1) + 0.5)
    options = ops.AttentionOptions(scale_mode=scale_mode, scale=0.3)
    prep = cpu_dispatch.prepare_qk(q, k, tensors, options, 64, 128)
    assert torch.equal(prep.q_bits[:, :, :9], reference.sign_pack(q)[0])
    assert torch.equal(prep.k_bits[..., :11].transpose(-1, -2), reference.sign_pack(k)[0])
    assert not prep.q_bits[:, :, 9:].any() and not prep.k_bits[..., 11:].any()
    k4 = reference.expand_kv_heads(k, 4).float()
    k_static = reference.expand_kv_heads(tensors.k_scale, 4)
    s_q = reference.qk_scale(q.float(), scale_mode, tensors.q_scale).reshape(2, 4)
    s_k = reference.qk_scale(k4, scale_mode, k_static).reshape(2, 4)
    torch.testing.assert_close(prep.s_q, s_q)
    torch.testing.assert_close(prep.s_k, s_k)
    torch.testing.assert_close(prep.coef, s_q * s_k * 0.3)
    assert tensors.q_scale.min() >= 0.5, "static scales are read, never written"


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_prepare_poisons_the_head_of_a_non_finite_input(bad):
    q, k = torch.randn(1, 3, 8, 32), torch.randn(1, 3, 8, 32)
    k[0, 1, 5, 7] = bad
    for mode in ("mean_abs", "none"):
        prep = cpu_dispatch.prepare_qk(q, k, ops.AttentionTensors(),
                                       ops.AttentionOptions(scale_mode=mode), 64, 64)
        assert torch.isnan(prep.coef[0, 1]) and torch.isfinite(prep.coef[0, [0, 2]]).all()


def test_supports_is_remembered_per_signature_but_not_for_static_scale_values():
    q, k, v = (torch.randn(1, 2, 16, 32) for _ in range(3))
    options = ops.AttentionOptions(scale_mode="static")
    scale = torch.ones(2, 1, 1)
    tensors = ops.AttentionTensors(q_scale=scale, k_scale=torch.ones(2, 1, 1))
    assert cpu_dispatch.binary_attention_supports(q, k, v, tensors, options) is None
    scale.fill_(-1.0)   # a new version of the tensor: its values are read again
    reason = cpu_dispatch.binary_attention_supports(q, k, v, tensors, options)
    assert reason is not None and "q_scale" in reason
    plain = ops.AttentionOptions()
    assert cpu_dispatch.binary_attention_supports(q, k, v, ops.AttentionTensors(), plain) is None
    key = cpu_dispatch._signature(q, k, v, ops.AttentionTensors(), plain)
    assert cpu_dispatch._answers[key] is None
    assert cpu_dispatch._signature(q, k, v.double(), ops.AttentionTensors(), plain) != key
