"""GPU correctness of binattn's prebuilt TVM CUDA kernels against the reference op.

Runs only where torch sees a CUDA GPU (skips cleanly elsewhere); on a GPU the kernel library must
load (a load failure fails the tests, it does not skip them). Every test draws fresh random inputs
(seed printed on failure, never zeros) and poisons outputs before each launch. Sign bits, row
popcounts and integer scores must be bit-exact; attention output must match the reference within
the rounding of P to the value dtype. Covers D ∈ {32, 64, 72, 80, 96, 128, 256}, odd N, bool and
float masks, causal, GQA, dense / broadcast bias, bias tables looked up in-kernel, the three
scale modes and the fallback path,
each on both attention kernels: the short-sequence one (32-key blocks) and the regular one. The
option cases come from the shared catalogue (``op_cases``: the ones marked for ``cuda``).
"""
from __future__ import annotations

import os
import warnings

import pytest
import torch

import binattn
from binattn.ops import AttentionOptions, AttentionTensors, dispatch, reference, split_keywords

from .op_cases import CASES, Shape, randn, relpos_bias

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

HEAD_DIMS = (32, 64, 72, 80, 96, 128, 256)
DTYPES = (torch.float16, torch.bfloat16)
TOL = {torch.float16: 4e-3, torch.bfloat16: 3e-2}
VARIANTS = ("short", "long")  # the two attention kernels of each (dtype, dv)


def run_variant(cuda_dispatch, q, k, v, kw, variant):
    """The CUDA attention kernel ``variant`` (keyword arguments as binattn.ops.binary_attention),
    into a NaN-poisoned output."""
    out = torch.full((*q.shape[:-1], v.shape[-1]), float("nan"), dtype=v.dtype, device="cuda")
    return cuda_dispatch.attention_kernel(q, k, v, *split_keywords(**kw), out=out,
                                          variant=variant)


@pytest.fixture(scope="module")
def cuda_dispatch():
    from binattn.tvm_kernels.cuda import dispatch as cd

    reason = cd.library_reason(torch.device("cuda"))
    assert reason is None, f"CUDA kernel library did not load: {reason}"
    return cd


@pytest.fixture
def gen():
    seed = int.from_bytes(os.urandom(4), "little")
    return torch.Generator(device="cuda").manual_seed(seed)


PACK_CASES = [(dtype, d, vec) for dtype in (torch.float16, torch.bfloat16, torch.float32)
              for d in HEAD_DIMS + (1, 33, 200) for vec in (False, True)
              if not vec or (dtype != torch.float32 and d % 8 == 0)]  # 16-byte loads: 16-bit, D % 8


@pytest.mark.parametrize("dtype, head_dim, vec", PACK_CASES)
def test_sign_pack_bit_exact(cuda_dispatch, gen, dtype, head_dim, vec):
    x = randn(gen, 3, 37, head_dim, dtype=dtype)
    x[0, 0, : min(5, head_dim)] = 0  # sign(0) = +1
    x[1, 1, : min(3, head_dim)] = -0.0  # -0.0 >= 0 too
    for words in (reference.num_words(head_dim), 8):
        if words < reference.num_words(head_dim):
            continue
        bits = torch.full((3, 37, words), -12345, dtype=torch.int32, device="cuda")
        pops = torch.full((3, 37), -7, dtype=torch.int32, device="cuda")
        abs_sum = torch.zeros(3, dtype=torch.float32, device="cuda")
        name = f"binattn_sign_pack_{cuda_dispatch.PACK_DTYPES[dtype]}"
        if vec:
            name = cuda_dispatch.vec_sign_pack_name(cuda_dispatch.PACK_DTYPES[dtype], head_dim)
            x_in = cuda_dispatch._quads(x.unsqueeze(0))  # [1, 3, 37, D/8, 4]
        else:
            x_in = x.unsqueeze(0)
        cuda_dispatch._call(x.device, name, x_in, bits, pops, abs_sum, 0, 1)
        ref_bits, ref_pops = reference.sign_pack(x)
        w = ref_bits.shape[-1]
        assert torch.equal(bits[..., :w], ref_bits), f"seed {gen.initial_seed()}"
        assert torch.all(bits[..., w:] == 0)
        assert torch.equal(pops, ref_pops)
        # the attention kernel's key form: SCORE_MAGIC − popcount
        cuda_dispatch._call(x.device, name, x_in, bits, pops, abs_sum.clone(),
                            cuda_dispatch.SCORE_MAGIC, -1)
        assert torch.equal(pops, cuda_dispatch.SCORE_MAGIC - ref_pops)
        torch.testing.assert_close(abs_sum, x.float().abs().sum((-2, -1)), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_sign_pack_q_and_k_in_one_launch(cuda_dispatch, gen, dtype, head_dim):
    """The one-launch q-and-k sign-pack: GQA head counts and odd, unequal lengths; bits,
    key popcounts (the attention kernel's form) and both Σ|x| as the reference, poisoned
    outputs, the q sums and the k sums in their own slots of one buffer."""
    q, k = randn(gen, 2, 6, 45, head_dim, dtype=dtype), randn(gen, 2, 2, 131, head_dim, dtype=dtype)
    q[0, 0, 0, : min(5, head_dim)] = 0
    k[1, 1, 3, :3] = -0.0
    q3, k3 = q.reshape(12, 45, head_dim), k.reshape(4, 131, head_dim)
    q_bits = torch.full((12, 45, 8), -12345, dtype=torch.int32, device="cuda")
    k_bits = torch.full((4, 131, 8), -12345, dtype=torch.int32, device="cuda")
    k_pop = torch.full((4, 131), -7, dtype=torch.int32, device="cuda")
    abs_sum = torch.zeros(16, dtype=torch.float32, device="cuda")
    cuda_dispatch._call(q.device, cuda_dispatch.qk_sign_pack_name(cuda_dispatch.PACK_DTYPES[dtype],
                                                                  head_dim),
                        cuda_dispatch._quads(q), cuda_dispatch._quads(k), q_bits, k_bits, k_pop,
                        abs_sum, cuda_dispatch.SCORE_MAGIC, -1, 12)
    for bits, x in ((q_bits, q3), (k_bits, k3)):
        ref_bits, _ = reference.sign_pack(x)
        w = ref_bits.shape[-1]
        assert torch.equal(bits[..., :w], ref_bits), f"seed {gen.initial_seed()}"
        assert torch.all(bits[..., w:] == 0)
    assert torch.equal(k_pop, cuda_dispatch.SCORE_MAGIC - reference.sign_pack(k3)[1])
    want = torch.cat([q3.float().abs().sum((-2, -1)), k3.float().abs().sum((-2, -1))])
    torch.testing.assert_close(abs_sum, want, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("head_dim, k_dtype", [(64, torch.bfloat16), (36, torch.bfloat16),
                                               (64, torch.float32)])
def test_pack_q_and_k_paths_agree(cuda_dispatch, gen, head_dim, k_dtype):
    """One launch (16-bit q and k of one dtype, D % 8 == 0) or two (otherwise): same operands."""
    q = randn(gen, 3, 4, 50, head_dim, dtype=torch.bfloat16)
    k = randn(gen, 3, 2, 77, head_dim, dtype=k_dtype)
    q_bits, k_bits, k_pop, q_abs, k_abs = cuda_dispatch.pack_q_and_k(q, k)
    w = reference.num_words(head_dim)
    assert torch.equal(q_bits[..., :w], reference.sign_pack(q)[0])
    assert torch.equal(k_bits[..., :w], reference.sign_pack(k)[0])
    assert torch.equal(k_pop, cuda_dispatch.SCORE_MAGIC - reference.sign_pack(k)[1])
    for got, x in ((q_abs, q), (k_abs, k)):
        torch.testing.assert_close(got, x.float().abs().sum((-2, -1)).reshape(-1), rtol=1e-5,
                                   atol=1e-3)


def test_sign_pack_op_uses_kernel(cuda_dispatch, gen):
    x = randn(gen, 2, 5, 41, 96, dtype=torch.bfloat16)
    words, pops = binattn.ops.sign_pack(x)
    assert dispatch.kernel_report()["sign_pack/cuda"] == "tvm-cuda:sign_pack"
    ref_words, ref_pops = reference.sign_pack(x)
    assert torch.equal(words, ref_words) and torch.equal(pops, ref_pops)


@pytest.mark.parametrize("head_dim", HEAD_DIMS + (1, 255))
def test_popcount_scores_bit_exact(cuda_dispatch, gen, head_dim):
    q_bits, _ = reference.sign_pack(randn(gen, 2, 3, 77, head_dim))
    k_bits, _ = reference.sign_pack(randn(gen, 2, 3, 131, head_dim))
    scores = binattn.ops.popcount_scores(q_bits, k_bits, head_dim)
    assert dispatch.kernel_report()["popcount_scores/cuda"] == "tvm-cuda:popcount_scores"
    ref = reference.popcount_scores(q_bits, k_bits, head_dim)
    assert torch.equal(scores, ref), f"seed {gen.initial_seed()}"
    assert int(scores.abs().max()) <= head_dim


GPU_SHAPE = Shape(batch=2, heads=4, kv_heads=4, n_q=77, n_k=133)


def _case_inputs(gen, case, dtype, head_dim):
    """Catalogue case ``case`` (``op_cases``) over the GPU base shape, on the GPU."""
    return CASES[case].inputs(gen, GPU_SHAPE, dtype=dtype, head_dim=head_dim)


def _check(out, q, k, v, kw, gen):
    with dispatch.reference_only():
        ref = binattn.ops.binary_attention(q, k, v, **kw)
    assert not torch.isnan(out).any(), f"NaN left in output (seed {gen.initial_seed()})"
    err = (out.float() - ref.float()).abs().max().item()
    bound = TOL[v.dtype] * max(1.0, ref.float().abs().max().item())
    if kw.get("pv_bits") == 8:  # exp2.approx may move a p·255 across a rounding boundary: a
        bound += 2 / 255 * v.float().abs().max().item()  # level or two of one key's |v|
    assert err <= bound, f"max err {err:.3g} > {bound:.3g} (seed {gen.initial_seed()})"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_attention_matches_reference(cuda_dispatch, gen, dtype, head_dim, variant):
    q, k, v, kw = _case_inputs(gen, "plain", dtype, head_dim)
    _check(run_variant(cuda_dispatch, q, k, v, kw, variant), q, k, v, kw, gen)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("head_dim", (64, 72, 128))
@pytest.mark.op_cases(kernel="cuda", exclude=("plain",))
def test_attention_cases_match_reference(cuda_dispatch, gen, op_case, head_dim, variant):
    dtype = torch.bfloat16 if head_dim != 72 else torch.float16
    q, k, v, kw = _case_inputs(gen, op_case, dtype, head_dim)
    _check(run_variant(cuda_dispatch, q, k, v, kw, variant), q, k, v, kw, gen)


def test_relpos_bias_view_is_read_in_place(cuda_dispatch, gen):
    """RelPosBias's gathered table ([N, N, H] permuted to [H, N, N]: a non-contiguous view) and a
    transposed dense bias go to the kernel with their own strides, no copy, and give the
    reference's output."""
    from binattn.ops.bias import RelPosBias

    torch.manual_seed(gen.initial_seed())
    rel = RelPosBias(4, (7, 7)).cuda()
    with torch.no_grad():
        rel.table.normal_(0, 0.5)
    q, k, v = (randn(gen, 2, 4, 50, 64, dtype=torch.bfloat16) for _ in range(3))
    for bias in (rel().detach(), randn(gen, 4, 50, 50).transpose(-1, -2)):
        assert not bias.is_contiguous()
        flat, strides = cuda_dispatch._broadcast_strides(bias)
        assert flat.data_ptr() == bias.data_ptr() and strides[1:] == list(bias.stride())
        for variant in VARIANTS:
            _check(run_variant(cuda_dispatch, q, k, v, {"bias": bias}, variant), q, k, v,
                   {"bias": bias}, gen)


def _relpos(gen, heads, grid):
    return relpos_bias(heads, grid, gen.initial_seed(), "cuda")


TABLE_CASES = ("relpos", "shared_column", "transposed_table", "int64_index", "causal", "gqa",
               "random_index", "wide_table", "expanded_rows")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("head_dim", (32, 64, 72, 128, 256))
@pytest.mark.parametrize("case", TABLE_CASES)
def test_bias_table_is_looked_up_in_kernel(cuda_dispatch, gen, case, head_dim, variant):
    """bias=table [T, H] with bias_index [Nq, Nk] runs the table kernel (the table's column in
    shared memory, one index load per score) and gives the reference's output — with the
    no-shift softmax where the table's range allows it, the online one where not."""
    dtype = torch.float16 if head_dim == 72 else torch.bfloat16
    heads, hkv, grid = 4, 2 if case == "gqa" else 4, (7, 9)
    n = 1 + grid[0] * grid[1]
    table, index = _relpos(gen, heads, grid)
    if case == "shared_column":
        table = table[:, :1].contiguous()
    if case == "transposed_table":  # a [H, T] parameter seen as [T, H]
        table = table.t().contiguous().t()
    if case == "expanded_rows":  # every row the same view (row stride 0)
        table = table[:1].expand_as(table)
    if case == "wide_table":  # a range past the no-shift softmax's: the online one runs
        table = table * 40
    if case == "int64_index":
        index = index.long()
    if case == "random_index":  # any index, not only the relative-position layout
        index = torch.randint(0, table.shape[0], (n, n), generator=gen, device="cuda",
                              dtype=torch.int32)
    q = randn(gen, 2, heads, n, head_dim, dtype=dtype)
    k, v = (randn(gen, 2, hkv, n, head_dim, dtype=dtype) for _ in range(2))
    kw = {"bias": table, "bias_index": index, "is_causal": case == "causal"}
    assert cuda_dispatch.uses_table_kernel(q, v, table, None, None, index, variant)
    _check(run_variant(cuda_dispatch, q, k, v, kw, variant), q, k, v, kw, gen)


@pytest.mark.parametrize("head_dim", (64, 128, 256))
@pytest.mark.parametrize("case", TABLE_CASES)
def test_pv8_bias_table_is_looked_up_in_kernel(cuda_dispatch, gen, case, head_dim):
    """The 8-bit kernel's table variant: the same table cases, pv_bits=8, against the
    reference's 8-bit path (both first-pass modes: the wide table runs the online one)."""
    heads, hkv, grid = 4, 2 if case == "gqa" else 4, (7, 9)
    n = 1 + grid[0] * grid[1]
    table, index = _relpos(gen, heads, grid)
    table = {"shared_column": table[:, :1].contiguous(),
             "transposed_table": table.t().contiguous().t(),
             "wide_table": table * 40, "expanded_rows": table[:1].expand_as(table)}.get(case, table)
    if case == "int64_index":
        index = index.long()
    if case == "random_index":
        index = torch.randint(0, table.shape[0], (n, n), generator=gen, device="cuda")
    q = randn(gen, 2, heads, n, head_dim, dtype=torch.bfloat16)
    k, v = (randn(gen, 2, hkv, n, head_dim, dtype=torch.bfloat16) for _ in range(2))
    kw = {"bias": table, "bias_index": index, "is_causal": case == "causal", "pv_bits": 8}
    assert cuda_dispatch.uses_table_kernel(q, v, table, None, 8, index)
    _check(run_variant(cuda_dispatch, q, k, v, kw, "auto"), q, k, v, kw, gen)


def test_bias_table_fallbacks_gather_on_the_host(cuda_dispatch, gen):
    """A table past the kernel's shared memory or a mask to fold in: the table is gathered on
    the host (dense-bias kernels) — still the kernel, still the reference's output."""
    dev = torch.device("cuda")
    capacity = max(cuda_dispatch.table_capacity(dev, torch.bfloat16, 64, 50),
                   cuda_dispatch.table_capacity(dev, torch.bfloat16, 64, 50, pv_bits=8))
    assert capacity >= 2048
    q, k, v = (randn(gen, 2, 4, 50, 64, dtype=torch.bfloat16) for _ in range(3))
    big = randn(gen, capacity + 1, 4)
    index = torch.randint(0, capacity + 1, (50, 50), generator=gen, device="cuda")
    index[0, 0] = capacity  # the last row is used
    table, rel_index = _relpos(gen, 4, (7, 7))
    mask = torch.rand(50, 50, generator=gen, device="cuda") > 0.2
    for kw in ({"bias": big, "bias_index": index},
               {"bias": big, "bias_index": index, "pv_bits": 8},
               {"bias": table, "bias_index": rel_index, "attn_mask": mask},
               {"bias": table, "bias_index": rel_index, "attn_mask": mask, "pv_bits": 8}):
        assert not cuda_dispatch.uses_table_kernel(q, v, kw["bias"], kw.get("attn_mask"),
                                                   kw.get("pv_bits"), kw["bias_index"])
        out = binattn.ops.binary_attention(q, k, v, **kw)
        assert dispatch.kernel_report()["binary_attention/cuda"] == "tvm-cuda:binary_attention"
        _check(out, q, k, v, kw, gen)


def test_bias_table_index_out_of_range_is_refused(cuda_dispatch, gen):
    """An index past the table is a clear error before any kernel reads past it."""
    q, k, v = (randn(gen, 1, 4, 50, 64, dtype=torch.bfloat16) for _ in range(3))
    table, index = _relpos(gen, 4, (7, 7))
    with pytest.raises(ValueError, match="outside the table"):
        binattn.ops.binary_attention(q, k, v, bias=table, bias_index=index + table.shape[0])


@pytest.mark.parametrize("case", ("plain", "causal", "gqa"))
def test_op_uses_kernel(cuda_dispatch, gen, case):
    """The public op reaches the CUDA kernel (the dispatcher picks the variant)."""
    q, k, v, kw = _case_inputs(gen, case, torch.bfloat16, 64)
    out = binattn.ops.binary_attention(q, k, v, **kw)
    assert dispatch.kernel_report()["binary_attention/cuda"] == "tvm-cuda:binary_attention"
    _check(out, q, k, v, kw, gen)


def test_kernel_variant_choice(cuda_dispatch):
    """Up to the library's short_max_keys keys the short-sequence kernel runs, beyond it the
    regular one; an unknown variant is refused by name."""
    dev = torch.device("cuda")
    limit = cuda_dispatch._library(dev)[1]["short_max_keys"]
    assert cuda_dispatch.attention_symbol(dev, torch.bfloat16, 64, False, limit).endswith("_short")
    symbol = cuda_dispatch.attention_symbol
    assert not symbol(dev, torch.bfloat16, 64, True, limit + 1).endswith("_short")
    assert symbol(dev, torch.float16, 72, True, 7, "long").endswith("dv72_bias")
    # where a library has no short kernel of its own (its short schedule is the regular one:
    # dv 72 in the sm_90a library) the regular kernel serves both
    own_short = 72 in cuda_dispatch._library(dev)[1]["attention_short"].get("float16", ())
    assert cuda_dispatch.attention_symbol(dev, torch.float16, 72, False, 7, "short").endswith(
        "dv72_short" if own_short else "dv72")
    with pytest.raises(ValueError, match="variant"):
        cuda_dispatch.attention_symbol(dev, torch.bfloat16, 64, False, 7, "medium")


# the kernel picks its softmax per CTA from coef·2·D (coef = 2·scale·log2 e with scale_mode
# "none"): a fixed shift when it fits (bf16 ≤ 100, fp16 ≤ 24), the online softmax otherwise;
# D > 128 runs the b1 mma twice instead of duplicating the bits
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", (64, 200))
@pytest.mark.parametrize("scale_kw", ({"scale_mode": "none", "scale": 0.002}, {},
                                      {"scale_mode": "none", "scale": 2.0}),
                         ids=("fixed-shift", "mean_abs", "online"))
@pytest.mark.parametrize("causal", (False, True))
@pytest.mark.parametrize("variant", VARIANTS)
def test_attention_softmax_modes(cuda_dispatch, gen, dtype, head_dim, scale_kw, causal, variant):
    q = randn(gen, 2, 3, 97, head_dim, dtype=dtype)
    k = randn(gen, 2, 3, 131, head_dim, dtype=dtype)
    v = randn(gen, 2, 3, 131, 64, dtype=dtype)
    kw = dict(scale_kw, is_causal=causal)
    _check(run_variant(cuda_dispatch, q, k, v, kw, variant), q, k, v, kw, gen)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_pv8_matches_reference(cuda_dispatch, gen, dtype, head_dim):
    """pv_bits=8: the two-pass kernel with u8 P × s8 V on the 8-bit tensor cores."""
    q, k, v, kw = _case_inputs(gen, "plain", dtype, head_dim)
    kw["pv_bits"] = 8
    _check(run_variant(cuda_dispatch, q, k, v, kw, "auto"), q, k, v, kw, gen)


@pytest.mark.parametrize("head_dim", (64, 72, 128))
@pytest.mark.op_cases(kernel="cuda", exclude=("plain",))
def test_pv8_cases_match_reference(cuda_dispatch, gen, op_case, head_dim):
    dtype = torch.bfloat16 if head_dim != 72 else torch.float16
    q, k, v, kw = _case_inputs(gen, op_case, dtype, head_dim)
    kw["pv_bits"] = 8
    _check(run_variant(cuda_dispatch, q, k, v, kw, "auto"), q, k, v, kw, gen)


@pytest.mark.parametrize("scale_kw", ({}, {"scale_mode": "none", "scale": 2.0}))
@pytest.mark.parametrize("causal", (False, True))
def test_pv8_softmax_modes(cuda_dispatch, gen, scale_kw, causal):
    """The 8-bit kernel's first pass without a running max (small scales) and online (a scale
    whose exponent range is too wide for that), with and without causal masking."""
    q = randn(gen, 2, 3, 97, 64, dtype=torch.bfloat16)
    k = randn(gen, 2, 3, 131, 64, dtype=torch.bfloat16)
    v = randn(gen, 2, 3, 131, 64, dtype=torch.bfloat16)
    kw = dict(scale_kw, is_causal=causal, pv_bits=8)
    _check(run_variant(cuda_dispatch, q, k, v, kw, "auto"), q, k, v, kw, gen)


def test_pv8_op_uses_kernel_and_long_rows(cuda_dispatch, gen):
    """The public op reaches the 8-bit kernel; many keys, odd lengths, a narrow V."""
    q = randn(gen, 1, 2, 300, 64, dtype=torch.bfloat16)
    k = randn(gen, 1, 2, 2049, 64, dtype=torch.bfloat16)
    v = randn(gen, 1, 2, 2049, 40, dtype=torch.bfloat16)
    out = binattn.ops.binary_attention(q, k, v, pv_bits=8)
    assert dispatch.kernel_report()["binary_attention/cuda"] == "tvm-cuda:binary_attention"
    _check(out, q, k, v, {"pv_bits": 8}, gen)


def test_attention_long_sequence(cuda_dispatch, gen):
    q = randn(gen, 1, 2, 1500, 64, dtype=torch.bfloat16)
    k = randn(gen, 1, 2, 2049, 64, dtype=torch.bfloat16)
    v = randn(gen, 1, 2, 2049, 64, dtype=torch.bfloat16)
    _check(binattn.ops.binary_attention(q, k, v), q, k, v, {}, gen)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, dv", [(45, 40), (197, 64), (64, 72), (33, 256)])
def test_v8_quantization_is_the_reference(cuda_dispatch, gen, dtype, n, dv):
    """The V operand of the 8-bit kernel, un-permuted, un-transposed and scaled back, is the
    reference's int8 fake-quant of V exactly; padding keys and columns are 0."""
    from binattn.schedules.cuda.attention import dv_bucket, pv8_key_permutation

    v = randn(gen, 2, 3, n, dv, dtype=dtype)
    v[1, 2, :, 5] = 0  # an all-zero column (max 0: the reference's clamp)
    v8t, scale = cuda_dispatch.quantize_v8(v)
    bucket = dv_bucket(dv)
    v8 = v8t.view(torch.int8).transpose(-1, -2)  # [B, H, padded keys, bucket]
    unpermuted = torch.empty_like(v8)
    unpermuted[:, :, pv8_key_permutation(n, v.device)] = v8
    deq = unpermuted[:, :, :n, :dv].float() * (255 * scale.view(2, 3, bucket)[:, :, None, :dv])
    torch.testing.assert_close(deq, reference.quantize_v_s8(v.float()), rtol=1e-6, atol=1e-6)
    assert torch.all(unpermuted[:, :, n:] == 0) and torch.all(unpermuted[..., dv:] == 0)
    assert torch.all(scale.view(2, 3, bucket)[..., dv:] == 0)


def test_pv8_past_exact_int32_sums_falls_back(cuda_dispatch, gen):
    from binattn.schedules.cuda.attention import PV8_MAX_KEYS as MAX_KEYS

    q = randn(gen, 1, 1, 4, 32, dtype=torch.bfloat16)
    k, v = (randn(gen, 1, 1, MAX_KEYS + 1, 32, dtype=torch.bfloat16) for _ in range(2))
    reason = cuda_dispatch.attention_supports(q, k, v, AttentionTensors(),
                                              AttentionOptions(pv_bits=8))
    assert reason and "keys" in reason


@pytest.mark.op_cases(kernel="none")
def test_unsupported_option_falls_back_with_reason(cuda_dispatch, gen, op_case):
    q, k, v, kw = _case_inputs(gen, op_case, torch.bfloat16, 64)
    option = ("binarizer" if kw.get("binarizer", "sign") != "sign"
              else "soft_cap" if "sinks" in kw or "soft_cap" in kw else "top_n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dispatch._warned.clear()
        out = binattn.ops.binary_attention(q, k, v, **kw)
    assert any(option in str(w.message) for w in caught)
    assert dispatch.kernel_report()["binary_attention/cuda"].startswith("reference (")
    with dispatch.reference_only():
        ref = binattn.ops.binary_attention(q, k, v, **kw)
    assert torch.equal(out, ref)
