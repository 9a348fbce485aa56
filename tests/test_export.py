"""export: the bit-op decomposition is the op; MLIR holds XOR + popcount (no float QKᵀ) and parses
again; ONNX uses standard ops and matches PyTorch in onnxruntime; clear errors."""
import onnx
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import binattn
from binattn.errors import UserError
from binattn.export import bitops, mlir, mlir_run
from binattn.export import onnx as onnx_export
from binattn.ops import reference, split_keywords


class OneSite(torch.nn.Module):
    """A module whose only attention is binattn's op (what the pass produces at each site)."""

    def __init__(self, **options):
        super().__init__()
        self.options = options

    def forward(self, q, k, v):
        return binattn.ops.binary_attention(q, k, v, **self.options)


class FloatAttention(torch.nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


def qkv(b=1, h=2, n=16, d=64, hkv=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hkv = hkv or h
    return (torch.randn(b, h, n, d, generator=gen), torch.randn(b, hkv, n, d, generator=gen),
            torch.randn(b, hkv, n, d, generator=gen))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 24), d=st.integers(1, 80), group=st.sampled_from([1, 2]),
       top_n=st.one_of(st.none(), st.integers(1, 24)), causal=st.booleans(),
       pv_bits=st.sampled_from([None, 8]), portable=st.booleans(), seed=st.integers(0, 1000),
       sinks=st.booleans(), soft_cap=st.sampled_from([None, 0.3]))
def test_decomposition_equals_reference(n, d, group, top_n, causal, pv_bits, portable, seed,
                                        sinks, soft_cap):
    q, k, v = qkv(n=n, d=d, h=2 * group, hkv=2, seed=seed)        # group > 1: GQA
    gen = torch.Generator().manual_seed(seed + 1)
    bias = 0.1 * torch.randn(1, q.shape[1], n, n, generator=gen)
    options = dict(bias=bias, is_causal=causal, top_n=top_n, pv_bits=pv_bits, soft_cap=soft_cap,
                   sinks=torch.randn(q.shape[1], generator=gen) if sinks else None)
    want = reference.binary_attention(q, k, v, *split_keywords(**options))
    got = bitops.binary_attention_bitops(q, k, v, **options, portable=portable)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("portable", [False, True])
def test_bit_scores_are_exact(portable):
    q, k, _ = qkv(n=33, d=70)
    q[0, 0, 0, :5] = 0.0                                            # sign(0) = +1
    signs = lambda x: torch.where(x >= 0, 1, -1)  # noqa: E731
    assert torch.equal(bitops.bit_scores(q, k, 70, portable),
                       (signs(q) @ signs(k).transpose(-1, -2)).to(torch.int32))


@settings(max_examples=30, deadline=None)
@given(d=st.integers(1, 130), seed=st.integers(0, 1000))
def test_portable_packing_and_popcount_match_reference(d, seed):
    x = torch.randn(3, 4, d, generator=torch.Generator().manual_seed(seed))
    words, _ = reference.sign_pack(x)
    assert torch.equal(bitops.sign_pack_int32(x), words)
    assert torch.equal(bitops.popcount_bittest(words), reference.popcount32(words))


def test_soft_binarizer_is_refused():
    q, k, v = qkv()
    with pytest.raises(UserError, match="binarizer='sign'"):
        bitops.binary_attention_bitops(q, k, v, binarizer="tanh")


@pytest.mark.parametrize("options", [{}, {"top_n": 4}, {"pv_bits": 8, "is_causal": True}])
def test_mlir_has_bit_ops_and_no_qk_matmul(options):
    inputs = qkv()
    text = mlir.to_mlir(OneSite(**options), inputs)
    assert mlir.reparse(text) == "builtin.module"
    ops = mlir.bit_op_summary(text)
    assert ops["xor"] >= 1 and ops["shift"] >= 4 and ops["and"] >= 4   # XOR + SWAR popcount
    assert ops["matmul"] == 1                                         # P·V only
    float_ops = mlir.bit_op_summary(mlir.to_mlir(FloatAttention(), inputs))
    assert float_ops["matmul"] == 2 and float_ops["xor"] == 0         # QKᵀ and P·V
    if "top_n" in options:
        assert ops["topk"] >= 1


@pytest.mark.parametrize("options, shape", [({}, {}), ({"pv_bits": 8, "is_causal": True},
                                                         {"h": 4, "hkv": 2, "d": 40})])
def test_mlir_runs_and_matches_pytorch(options, shape):
    """The emitted linalg MLIR, lowered to LLVM and executed, computes the op."""
    inputs = qkv(**shape)
    module = OneSite(**options)
    err, reason = mlir_run.compare(mlir.to_mlir(module, inputs), module, inputs)
    assert reason == "" and err <= 1e-5


def test_mlir_run_says_why_it_cannot():
    inputs = qkv()
    text = mlir.to_mlir(OneSite(top_n=4), inputs)
    assert mlir_run.compare(text, OneSite(top_n=4), inputs) == (
        None, "top-N lowers to tm_tensor ops the Python bindings cannot lower")


def test_mlir_torch_dialect():
    inputs = qkv()
    text = mlir.to_mlir(OneSite(), inputs, "torch")
    assert mlir.reparse(text) == "builtin.module"
    assert mlir.bit_op_summary(text)["torch_xor"] == 1
    with pytest.raises(UserError, match="--dialect must be one of"):
        mlir.to_mlir(OneSite(), inputs, "llvm")


@pytest.mark.parametrize("dialect", ["tosa", "stablehlo"])
def test_mlir_tosa_and_stablehlo_use_the_portable_popcount(dialect):
    text = mlir.to_mlir(OneSite(top_n=4), qkv(), dialect)
    assert mlir.reparse(text) == "builtin.module"
    ops = mlir.bit_op_summary(text)
    assert ops["xor"] == 1 and ops["and"] >= 32 and ops["shift"] == 0   # bit-test popcount
    assert ops["matmul"] == 1


def test_reparse_rejects_garbage():
    with pytest.raises(UserError, match="does not parse"):
        mlir.reparse("module { this is not mlir }")


@pytest.mark.parametrize("options, shape", [({}, {}), ({"top_n": 5}, {"d": 40}),
                                            ({"pv_bits": 8}, {"h": 4, "hkv": 2})])
def test_onnx_standard_ops_match_pytorch(tmp_path, options, shape):
    inputs = qkv(**shape)
    module = OneSite(**options)
    path = onnx_export.to_onnx(module, inputs, tmp_path / "m.onnx")
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert {"BitwiseXor", "BitShift", "BitwiseAnd", "Softmax", "MatMul"} <= ops
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)   # no custom op
    assert sum(n.op_type == "MatMul" for n in model.graph.node) == 1   # P·V only
    assert onnx_export.check_onnx(path, module, inputs) <= 1e-5
