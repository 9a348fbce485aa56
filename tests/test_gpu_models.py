"""Whole models on the GPU: the user-facing routes reach binattn's CUDA kernels and agree with the
reference op.

Skips cleanly without a CUDA GPU. Covers ``torch.compile(model, backend="binattn")`` on a CUDA
bf16 model (plain and 8-bit P/V), ``binattn.binarize`` with a learned relative-position bias
(the table and its index reach the kernel, which looks the table up itself), a training step
through the CUDA forward kernel and the STE backward, ``mode="reduce-overhead"`` (a CUDA graph
replayed), a compiled training step, and the transformers / diffusers drop-ins compiled.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import binattn
from binattn import backend
from binattn.models import demo_vit
from binattn.ops import dispatch
from tests.test_pass_helpers import sdpa_as_binary_attention

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
backend.register()


@pytest.fixture(autouse=True)
def _fresh():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _vit(dtype=torch.bfloat16):
    torch.manual_seed(0)
    model = demo_vit(depth=2).eval().to("cuda", dtype)
    x = torch.randn(8, 3, 32, 32, device="cuda", dtype=dtype)
    return model, x


@pytest.mark.parametrize("pv_bits", (None, 8))
def test_compile_backend_runs_the_cuda_kernel(pv_bits):
    model, x = _vit()
    options = {} if pv_bits is None else {"pv_bits": pv_bits}
    compiled = torch.compile(model, backend="binattn", fullgraph=True, options=options)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = compiled(x)
    assert dispatch.kernel_report()["binary_attention/cuda"] == "tvm-cuda:binary_attention"
    with torch.no_grad(), dispatch.reference_only(), sdpa_as_binary_attention(**options):
        want = model(x)
    assert got.dtype == torch.bfloat16 and not torch.isnan(got).any()
    torch.testing.assert_close(got.float(), want.float(), atol=0.1, rtol=0.05)


def test_binarize_with_relpos_bias_and_a_training_step():
    model, xb = _vit()
    gm = binattn.binarize(model, (xb,), binattn.BinarizeConfig(bias="relpos"))
    assert gm.meta["binattn_report"].num_rewritten == 2
    with torch.no_grad():  # a bias big enough to matter
        for name, p in gm.named_parameters():
            if "table" in name:
                p.normal_(0, 0.5)
    sites = [n for n in gm.graph.nodes if n.op == "call_module" and "binattn_site" in n.target]
    assert sites and all("bias_index" in n.kwargs for n in sites)
    with torch.no_grad():
        out = gm(xb)
        assert dispatch.kernel_report()["binary_attention/cuda"] == "tvm-cuda:binary_attention"
        with dispatch.reference_only():
            ref = gm(xb)
    torch.testing.assert_close(out.float(), ref.float(), atol=0.1, rtol=0.05)
    # one optimizer step: CUDA forward kernel, STE backward (reference VJP) into the relpos tables
    params = [p for p in gm.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = gm(xb).float().pow(2).mean()
        loss.backward()
    tables = [p for n, p in gm.named_parameters() if "table" in n]
    assert tables and all(t.grad is not None and torch.isfinite(t.grad).all() for t in tables)
    assert any(t.grad.abs().sum() > 0 for t in tables)
    opt.step()


def test_reduce_overhead_replays_a_cuda_graph_with_the_binattn_kernels():
    """``mode="reduce-overhead"`` reaches Inductor: the model is captured in a CUDA graph (no
    cudagraph skip: the binattn ops make no host sync and allocate from the graph pool) and
    every replay equals the eager binarized model, for new input values too."""
    from torch._dynamo.utils import counters

    model, x = _vit()
    gm = binattn.binarize(model, (x,))
    counters.clear()
    compiled = torch.compile(model, backend="binattn", mode="reduce-overhead", fullgraph=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seed in range(4):   # warm-up runs, the recording, then replays
            torch.manual_seed(seed)
            xs = torch.randn_like(x)
            got = compiled(xs).clone()
            torch.testing.assert_close(got.float(), gm(xs).float(), atol=2e-2, rtol=2e-2)
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
    assert dispatch.kernel_report()["binary_attention/cuda"] == "tvm-cuda:binary_attention"


def test_compiled_binarized_training_step_matches_eager():
    """``torch.compile(gm)`` in train mode: forward and backward through Inductor, the CUDA
    forward kernel inside; loss and gradients equal the eager GraphModule's."""
    model, x = _vit(torch.float32)
    gm = binattn.binarize(model, (x,), binattn.BinarizeConfig(bias="head")).train()
    compiled = torch.compile(gm, fullgraph=True)
    grads = []
    for fn in (gm, compiled):
        gm.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss = fn(x).square().mean()
            loss.backward()
        grads.append({n: p.grad.clone() for n, p in gm.named_parameters()
                      if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("bias" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-4, rtol=1e-3)


def test_dropins_compile_fullgraph_on_the_gpu():
    """transformers' ``attn_implementation="binattn"`` and the diffusers processor, compiled with
    the default Inductor in one graph, run the CUDA kernel and agree with their eager selves."""
    transformers = pytest.importorskip("transformers")
    diffusers = pytest.importorskip("diffusers")
    import binattn.diffusers as bdf
    import binattn.hf  # noqa: F401  (registers "binattn")

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=96,
                                  attn_implementation="binattn")
    bert = transformers.BertModel(cfg).eval().to("cuda", torch.bfloat16)
    ids = torch.randint(0, 64, (2, 40), device="cuda")
    dit = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=4,
        num_layers=2, sample_size=16, patch_size=2, num_embeds_ada_norm=10,
        norm_num_groups=1).eval().to("cuda", torch.bfloat16)
    bdf.apply(dit)
    dit_args = dict(hidden_states=torch.randn(2, 4, 16, 16, device="cuda", dtype=torch.bfloat16),
                    timestep=torch.tensor([1, 5], device="cuda"),
                    class_labels=torch.tensor([0, 3], device="cuda"))
    runs = ((bert, lambda m: m(ids).last_hidden_state),
            (dit, lambda m: m(**dit_args).sample))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for model, call in runs:
            eager = call(model)
            compiled = call(torch.compile(model, fullgraph=True))
            assert dispatch.kernel_report()["binary_attention/cuda"] == (
                "tvm-cuda:binary_attention")
            torch.testing.assert_close(compiled.float(), eager.float(), atol=5e-2, rtol=5e-2)
