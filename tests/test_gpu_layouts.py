"""GPU: the kernels read q, k, v through their strides and write the output as ``[B, N, H, D]``.

Skips cleanly without a CUDA GPU. The layouts users hand to attention — a fused QKV projection's
``reshape → permute → unbind`` (timm), Hugging Face's ``view → transpose(1, 2)``, an MQA/GQA
``expand`` — must give exactly the output of the same values passed contiguous (the kernels
read the same numbers), on every kernel (short and long 16-bit, 8-bit P·V, bias table), with no
``clone``/``copy_`` of q, k, v or the output in the profile. A NaN/Inf in q or k makes the
(b, h)'s output NaN in the CUDA kernels as in the reference.
"""
from __future__ import annotations

import zlib

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import binattn
from binattn.ops import dispatch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
COPY_OPS = ("aten::clone", "aten::copy_", "aten::contiguous", "aten::_to_copy")


def _layouts(layout: str, B: int, H: int, N: int, D: int, dtype=torch.bfloat16):
    """(q, k, v) as a model makes them, and the same values contiguous."""
    g = torch.Generator(device="cuda").manual_seed(zlib.crc32(layout.encode()))  # stable
    if layout == "fused_qkv":  # timm: qkv(x).reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4)
        qkv = torch.randn(B, N, 3 * H * D, device="cuda", generator=g).to(dtype)
        q, k, v = qkv.reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
    elif layout == "hf_transpose":  # HF: proj(x).view(B, N, H, D).transpose(1, 2)
        q, k, v = (torch.randn(B, N, H, D, device="cuda", generator=g).to(dtype).transpose(1, 2)
                   for _ in range(3))
    elif layout == "mqa_expand":  # one kv head broadcast to H
        q = torch.randn(B, H, N, D, device="cuda", generator=g).to(dtype)
        k, v = (torch.randn(B, 1, N, D, device="cuda", generator=g).to(dtype).expand(B, H, N, D)
                for _ in range(2))
    else:  # a slice of a longer sequence: row stride D, batch stride past N·D
        q, k, v = (torch.randn(B, H, N + 9, D, device="cuda", generator=g).to(dtype)[:, :, 4:N + 4]
                   for _ in range(3))
    assert not (q.is_contiguous() and k.is_contiguous() and v.is_contiguous())
    return (q, k, v), tuple(x.contiguous() for x in (q, k, v))


LAYOUTS = ("fused_qkv", "hf_transpose", "mqa_expand", "sequence_slice")
OPTIONS = {"plain": {}, "pv8": {"pv_bits": 8}, "causal": {"is_causal": True},
           "static": {"scale_mode": "static"}}


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("N", (50, 197, 600))
def test_strided_inputs_give_the_contiguous_output(layout, options, N):
    kw = dict(OPTIONS[options])
    if kw.get("scale_mode") == "static":
        kw.update(q_scale=torch.tensor(0.7, device="cuda"),
                  k_scale=torch.tensor(1.3, device="cuda"))
    (q, k, v), (qc, kc, vc) = _layouts(layout, 2, 4, N, 64)
    got = binattn.ops.binary_attention(q, k, v, **kw)
    assert dispatch.kernel_report()["binary_attention/cuda"] == "tvm-cuda:binary_attention"
    want = binattn.ops.binary_attention(qc, kc, vc, **kw)
    assert torch.equal(got, want)
    with dispatch.reference_only():
        ref = binattn.ops.binary_attention(qc, kc, vc, **kw)
    tol = 0.05 if kw.get("pv_bits") else 0.03
    torch.testing.assert_close(got.float(), ref.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_strided_inputs_with_a_bias_table(layout):
    from binattn.ops.bias import RelPosBias

    rel = RelPosBias(4, (7, 7), 1).cuda()
    with torch.no_grad():
        rel.table.normal_(0, 0.5)
    (q, k, v), (qc, kc, vc) = _layouts(layout, 2, 4, 50, 64)
    kw = {"bias": rel.table.detach(), "bias_index": rel.index}
    assert torch.equal(binattn.ops.binary_attention(q, k, v, **kw),
                       binattn.ops.binary_attention(qc, kc, vc, **kw))


@pytest.mark.parametrize("pv_bits", (None, 8))
@pytest.mark.parametrize("layout", ("fused_qkv", "hf_transpose"))
def test_no_copy_of_q_k_v_or_the_output(layout, pv_bits):
    (q, k, v), _ = _layouts(layout, 4, 12, 197, 64)
    binattn.ops.binary_attention(q, k, v, pv_bits=pv_bits)  # warm-up: library and symbols
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        out = binattn.ops.binary_attention(q, k, v, pv_bits=pv_bits)
        merged = out.transpose(1, 2).reshape(4, 197, 12 * 64)  # what the model does next
    big = q.numel()  # copies of small per-head tensors (scales) are not what this is about
    copies = [(e.name, e.input_shapes) for e in prof.events() if e.name in COPY_OPS
              and any(shape and torch.Size(shape).numel() >= big for shape in e.input_shapes)]
    assert not copies, f"copies of q, k, v or the output in the op call: {copies}"
    assert merged.data_ptr() == out.data_ptr()


def test_sign_pack_reads_strided_rows():
    (q, _, _), (qc, _, _) = _layouts("fused_qkv", 2, 3, 77, 96)
    for x, xc in ((q, qc), (q.float(), qc.float())):
        bits, pops = binattn.ops.sign_pack(x)
        ref_bits, ref_pops = binattn.ops.sign_pack(xc)
        assert torch.equal(bits, ref_bits) and torch.equal(pops, ref_pops)
        assert torch.equal(bits, binattn.ops.reference.sign_pack(xc)[0])


@pytest.mark.parametrize("pv_bits", (None, 8))
@pytest.mark.parametrize("scale_mode", ("mean_abs", "static", "none"))
@pytest.mark.parametrize("where", ("q", "k"))
@pytest.mark.parametrize("value", (float("nan"), float("inf")))
def test_non_finite_q_or_k_gives_nan_in_the_kernel(scale_mode, where, value, pv_bits):
    q, k, v = (torch.randn(2, 3, 100, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    (q if where == "q" else k)[1, 2, 5, 7] = value
    kw = {"scale_mode": scale_mode, "pv_bits": pv_bits}
    if scale_mode == "static":
        kw.update(q_scale=torch.tensor(0.7, device="cuda"),
                  k_scale=torch.tensor(1.3, device="cuda"))
    out = binattn.ops.binary_attention(q, k, v, **kw)
    assert dispatch.kernel_report()["binary_attention/cuda"] == "tvm-cuda:binary_attention"
    assert torch.isnan(out[1, 2]).all()
    out[1, 2] = 0
    assert torch.isfinite(out).all()
