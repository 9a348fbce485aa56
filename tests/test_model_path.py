"""The path around the kernel that every user takes: no host reads, no copies of q/k/v, the
output layout, and the NaN policy that makes both possible.

On the CPU (always) and on a CUDA GPU (where torch sees one; skipped otherwise): a forward and a
training step of a binarized ViT read nothing back to the host (the profiler counts
``aten::_local_scalar_dense``, on the GPU ``torch.cuda.set_sync_debug_mode("error")`` raises on
any sync); a NaN or Inf input gives NaN outputs for its (b, h) in every scale mode instead of a
finite wrong value, and ``check_finite``/``data_checks`` turn it into a ValueError naming the
argument; the op's output is laid out as ``[B, N, H, D]`` so ``transpose(1, 2).reshape`` after it
is a view; the bias-table index is range-checked once per tensor version; the pass leaves no
no-op slice whose backward would copy an activation.
"""
from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import binattn
from binattn.models import demo_vit
from binattn.ops import validation
from binattn.ops.options import split_keywords
from binattn.train.config import TrainConfig
from binattn.train.data import TensorData
from binattn.train.trainer import Trainer

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPE = {"cpu": torch.float32, "cuda": torch.bfloat16}


def _host_reads(fn) -> int:
    """How many times ``fn`` read a tensor value back to the host (``.item()``, ``bool(t)``,
    ``.tolist()``: all go through ``aten::_local_scalar_dense``)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == "aten::_local_scalar_dense")


def _binarized_vit(device: str, bias: str | None = "relpos"):
    torch.manual_seed(0)
    model = demo_vit(depth=2).to(device, DTYPE[device])
    x = torch.randn(4, 3, 32, 32, device=device, dtype=DTYPE[device])
    gm = binattn.binarize(model, (x,), binattn.BinarizeConfig(bias=bias))
    assert gm.meta["binattn_report"].num_rewritten == 2
    return gm, x


def _train_step(gm, x, optimizer):
    loss = gm(x).float().square().mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", ("relpos", None))
def test_forward_and_training_step_read_nothing_back(device, bias):
    gm, x = _binarized_vit(device, bias)
    optimizer = torch.optim.SGD(gm.parameters(), lr=1e-3, momentum=0.9)
    _train_step(gm, x, optimizer)  # warm-up: kernels load, the relpos index is checked once
    with torch.no_grad():
        assert _host_reads(lambda: gm(x)) == 0
    assert _host_reads(lambda: _train_step(gm, x, optimizer)) == 0
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            with torch.no_grad():
                gm(x)
            _train_step(gm, x, optimizer)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def _trainer(gm, x, **options):
    labels = torch.arange(x.shape[0], device=x.device) % 10
    cfg = TrainConfig(steps=8, batch_size=x.shape[0], progress=False,
                      device=x.device.type, **options)
    return Trainer(gm, TensorData((x,), labels), cfg), labels


@pytest.mark.parametrize("device", DEVICES)
def test_binattn_train_step_reads_nothing_back_between_log_points(device):
    gm, x = _binarized_vit(device)
    trainer, labels = _trainer(gm, x)
    trainer.step(0, (x,), labels)
    optimizer_reads = _host_reads(trainer.optimizer.step)  # AdamW's step counts: CPU tensors
    assert _host_reads(lambda: trainer.step(1, (x,), labels)) == optimizer_reads
    records = [trainer.step(i, (x,), labels) for i in (2, 3)]
    assert isinstance(records[0]["loss"], torch.Tensor)
    trainer.read_logs(records)  # one read for every value of every record
    assert all(isinstance(r[key], float) for r in records for key in ("loss", "output"))
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            trainer.step(4, (x,), labels)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_a_non_finite_loss_stops_training_at_the_next_log_point_naming_its_step():
    gm, x = _binarized_vit("cpu")
    x = x.clone()
    x[:, :, 0, 0] = float("nan")
    trainer, _ = _trainer(gm, x, log_every=4, checkpoint=None)
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 1 \("):
        trainer.run()
    assert len(trainer.history) == 4  # stopped at the first log point


@pytest.mark.parametrize("device", DEVICES)
def test_data_checks_name_the_bad_tensor_in_a_model(device):
    gm, x = _binarized_vit(device)
    x = x.clone()
    x[0, 0, 0, 0] = float("nan")
    with torch.no_grad():
        out = gm(x)  # unchecked: the NaN reaches the output, nothing is read back
        assert torch.isnan(out[0]).any()
        with binattn.ops.data_checks(), pytest.raises(ValueError, match="contains NaN"):
            gm(x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale_mode", ("mean_abs", "static", "none"))
@pytest.mark.parametrize("where", ("q_nan", "k_inf", "v_nan"))
def test_non_finite_input_gives_nan_for_its_head_only(device, scale_mode, where):
    torch.manual_seed(1)
    dtype = DTYPE[device]
    q, k, v = (torch.randn(2, 3, 40, 64, device=device, dtype=dtype) for _ in range(3))
    bad = {"q_nan": (q, float("nan")), "k_inf": (k, float("inf")), "v_nan": (v, float("nan"))}
    tensor, value = bad[where]
    tensor[1, 2, 5, 7] = value
    kw = {"scale_mode": scale_mode}
    if scale_mode == "static":
        kw.update(q_scale=torch.tensor(0.8, device=device),
                  k_scale=torch.tensor(0.9, device=device))
    if device == "cpu":  # a direct CPU call checks by default (no queue to drain there)
        with pytest.raises(ValueError, match=f"{where[0]} contains"):
            binattn.ops.binary_attention(q, k, v, **kw)
    out = binattn.ops.binary_attention(q, k, v, check_finite=False, **kw)
    assert torch.isnan(out[1, 2]).any(), "a non-finite input must not give a finite output"
    if where != "v_nan":  # q and k poison the whole (b, h); v only the rows that read it
        assert torch.isnan(out[1, 2]).all()
    others = torch.ones(2, 3, dtype=torch.bool)
    others[1, 2] = False
    assert torch.isfinite(out[others]).all()
    with pytest.raises(ValueError, match=f"{where[0]} contains"):
        binattn.ops.binary_attention(q, k, v, check_finite=True, **kw)


def test_float_mask_minus_inf_passes_the_data_check():
    q, k, v = torch.randn(3, 1, 2, 8, 32).unbind(0)
    mask = torch.zeros(8, 8).masked_fill(torch.ones(8, 8, dtype=torch.bool).triu(1), float("-inf"))
    binattn.ops.binary_attention(q, k, v, attn_mask=mask, check_finite=True)
    mask[0, 0] = float("nan")
    with pytest.raises(ValueError, match="attn_mask contains NaN"):
        binattn.ops.binary_attention(q, k, v, attn_mask=mask, check_finite=True)


@pytest.mark.parametrize("device", DEVICES)
def test_output_is_laid_out_for_the_following_reshape(device):
    q, k, v = torch.randn(3, 2, 4, 33, 32, device=device, dtype=DTYPE[device]).unbind(0)
    out = binattn.ops.binary_attention(q, k, v)
    assert out.shape == (2, 4, 33, 32)
    assert out.transpose(1, 2).is_contiguous()  # [B, N, H, D] in memory
    merged = out.transpose(1, 2).reshape(2, 33, 128)
    assert merged.data_ptr() == out.data_ptr()  # a view, not a copy


def test_cls_pooling_slice_costs_no_copy_in_the_backward():
    """Export writes ``x[:, 0]`` as a slice of all of dim 0 before the select; the pass drops
    that slice, so the eager backward makes no activation-sized ``slice_backward`` copy that the
    original model does not make."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.models.VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=1,
                                          num_heads=2, num_classes=3)
    x = torch.randn(2, 3, 32, 32)
    gm = binattn.binarize(model, (x,))
    slices = [n for n in gm.graph.nodes if n.target is torch.ops.aten.slice.Tensor]
    assert not slices, [n.args for n in slices]
    exact = binattn.binarize(model, (x,), binattn.BinarizeConfig(mode="float"))
    with torch.no_grad():   # float sites: the graph without the slice is still the model
        torch.testing.assert_close(exact(x), model(x), atol=1e-5, rtol=1e-5)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        gm(x).square().sum().backward()
    assert not [e for e in prof.events() if e.name == "aten::slice_backward"]


def _large_copies(fn, numel: int) -> list[tuple]:
    """(op, shapes) of every clone/copy_/contiguous/_to_copy of a tensor of ``numel`` or more
    elements that ``fn`` makes (the e2e benchmark's count of copies)."""
    from binattn.bench.e2e import COPY_OPS
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    return sorted((e.name, tuple(map(tuple, e.input_shapes))) for e in prof.events()
                  if e.name in COPY_OPS and any(s and torch.Size(s).numel() >= numel
                                                for s in e.input_shapes))


def test_cpu_training_step_copies_what_the_original_copies():
    """A binarized timm ViT's eager training step on the CPU (forward, the backward kernel,
    AdamW) copies no activation the original's step does not: the kernels read q, k, v and the
    output gradient in place and write unpadded gradients."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.models.VisionTransformer(img_size=48, patch_size=8, embed_dim=64, depth=2,
                                          num_heads=2, num_classes=3)
    x = torch.randn(3, 3, 48, 48)   # 37 tokens: padded inside the kernels, not around them
    gm = binattn.binarize(model, (x,))
    copies = {}
    for name, net in (("original", model), ("binarized", gm)):
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
        step = lambda net=net, optimizer=optimizer: _train_step(net, x, optimizer)  # noqa: E731
        step()
        copies[name] = _large_copies(step, 3 * 37 * 32 // 3)
    assert copies["binarized"] == copies["original"]
    assert binattn.ops.dispatch.kernel_report()["binary_attention_backward/cpu"].startswith("tvm")


def test_only_slices_that_keep_everything_are_dropped():
    from binattn.binarize_pass.noop_slices import drop_noop_slices

    class Slices(torch.nn.Module):
        def forward(self, x):
            return x[:, 0].sum(), x[1:, 1].sum(), x[:, :, :3].sum(), x[::2, 4].sum()

    x = torch.randn(8, 6, 5)   # a dynamic batch: export slices all of dim 0 before a select
    gm = torch.export.export(Slices(), (x,),
                             dynamic_shapes=({0: torch.export.Dim.AUTO},)).module()

    def slices():
        return [tuple(n.args[1:]) for n in gm.graph.nodes
                if n.target is torch.ops.aten.slice.Tensor]

    assert slices().count((0, 0, 2**63 - 1)) == 2
    assert drop_noop_slices(gm) == 2
    assert sorted(slices()) == [(0, 0, 2**63 - 1, 2), (0, 1, 2**63 - 1), (2, 0, 3)]
    torch.testing.assert_close(gm(x), Slices()(x))


def _as_a_site(q, k, v, **kw):
    """An op call as a binarized model's site makes it (data checks off unless switched on)."""
    return binattn.ops.binary_attention_with(q, k, v, *split_keywords(**kw))


def test_bias_index_is_checked_once_per_version():
    table = torch.randn(10, 2)
    index = torch.randint(0, 10, (6, 6))
    q, k, v = torch.randn(3, 1, 2, 6, 32).unbind(0)
    _as_a_site(q, k, v, bias=table, bias_index=index)
    assert _host_reads(lambda: _as_a_site(q, k, v, bias=table, bias_index=index)) == 0
    index[0, 0] = 10  # in place: a new version, checked again
    with pytest.raises(ValueError, match="outside the table's rows"):
        binattn.ops.binary_attention(q, k, v, bias=table, bias_index=index)
    small = torch.randn(5, 2)  # the old check does not cover a smaller table
    index[0, 0] = 7
    binattn.ops.binary_attention(q, k, v, bias=table, bias_index=index)
    with pytest.raises(ValueError, match="outside the table's rows"):
        binattn.ops.binary_attention(q, k, v, bias=small, bias_index=index)


def test_check_finite_must_be_a_bool_or_none():
    q, k, v = torch.randn(3, 1, 1, 4, 8).unbind(0)
    with pytest.raises(TypeError, match="check_finite"):
        binattn.ops.binary_attention(q, k, v, check_finite="yes")
    assert validation.resolve_check_finite(None) is validation.data_checks_enabled()


def test_eager_call_skips_the_dispatcher_only_where_nothing_is_lost():
    """No-grad eager calls run the op's implementation directly (host cost); a dispatch mode,
    a gradient to record or a compile goes through ``torch.ops.binattn.binary_attention``."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from binattn.ops import library

    class Seen(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    q, k, v = torch.randn(3, 2, 2, 9, 32).unbind(0)
    assert library.direct_call_ok(q, k, v, None)
    direct = binattn.ops.binary_attention(q, k, v)
    via_op = torch.ops.binattn.binary_attention(q, k, v, None, None, False, None, "mean_abs",
                                                None, None, None, None, "sign", 1.0, 1.0, None)
    assert torch.equal(direct, via_op) and direct.stride() == via_op.stride()
    with Seen() as mode:
        binattn.ops.binary_attention(q, k, v)
    assert any("binattn.binary_attention" in op for op in mode.ops)
    assert not library.direct_call_ok(q.requires_grad_(), k, v)
    with torch.no_grad():
        assert library.direct_call_ok(q, k, v)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        binattn.ops.binary_attention(q.detach(), k, v)
    assert any(e.key == "binattn::binary_attention" for e in prof.key_averages())


def test_static_scales_are_read_once_per_version():
    """The CPU kernel needs positive static scales: checked once per scale tensor version, so a
    static-mode call (HAD) reads nothing back after the first."""
    q, k, v = torch.randn(3, 1, 2, 9, 32).unbind(0)
    kw = {"scale_mode": "static", "q_scale": torch.tensor(0.7), "k_scale": torch.tensor(0.9)}
    _as_a_site(q, k, v, **kw)
    assert _host_reads(lambda: _as_a_site(q, k, v, **kw)) == 0
    kw["q_scale"].fill_(-1.0)  # in place: checked again, and the kernel refuses it
    binattn.ops.binary_attention(q, k, v, **kw)
    assert binattn.ops.kernel_report()["binary_attention/cpu"].startswith("reference (")
