"""A ``.pt2`` saved before ``AttentionOptions`` (``tests/data/binary_attention_v1.pt2``) still
loads and gives the outputs it gave then, bit for bit (the op's schema is kept).

``python tests/test_ops_saved_program.py`` writes the program, its inputs and its outputs again
(only with a schema change that is meant to break old files). What it does not: test kernels
(the reference runs both times).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import binattn
from binattn.ops import dispatch

DATA = Path(__file__).parent / "data"
PROGRAM, TENSORS = DATA / "binary_attention_v1.pt2", DATA / "binary_attention_v1.pt"


class TwoCalls(nn.Module):
    """Two op calls that between them set every option: mask, causal, scale, top-N, a dense
    bias; static scales, 8-bit P/V, a bias table with its index."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.bias = nn.Parameter(0.3 * torch.randn(2, 7, 7, generator=gen))
        self.table = nn.Parameter(0.3 * torch.randn(5, 2, generator=gen))
        self.register_buffer("index", torch.randint(0, 5, (7, 7), generator=gen,
                                                    dtype=torch.int32))
        self.register_buffer("q_scale", torch.tensor(0.8))
        self.register_buffer("k_scale", torch.tensor([[[[0.6]], [[1.1]]]]))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        a = binattn.ops.binary_attention(q, k, v, bias=self.bias, attn_mask=mask,
                                         is_causal=True, scale=0.3, top_n=3)
        b = binattn.ops.binary_attention(a, k, v, bias=self.table, bias_index=self.index,
                                         scale_mode="static", q_scale=self.q_scale,
                                         k_scale=self.k_scale, pv_bits=8, ste_clip=2.0)
        return a + b


def example_inputs() -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 7, 16, generator=gen) for _ in range(3))
    mask = torch.rand(7, 7, generator=gen) > 0.3
    return q, k, v, mask


def write() -> None:
    """Save the program, its inputs and its outputs (run with the code of the day)."""
    inputs = example_inputs()
    with dispatch.reference_only():
        program = torch.export.export(TwoCalls(), inputs)
        out = program.module()(*inputs)
    torch.export.save(program, PROGRAM)
    torch.save({"inputs": inputs, "output": out}, TENSORS)


def test_saved_program_loads_and_runs_bit_identically():
    program = torch.export.load(PROGRAM)
    saved = torch.load(TENSORS)
    calls = [n for n in program.graph.nodes if n.op == "call_function"
             and n.target == torch.ops.binattn.binary_attention.default]
    assert len(calls) == 2
    with dispatch.reference_only():
        out = program.module()(*saved["inputs"])
        eager = TwoCalls()(*saved["inputs"])
    assert torch.equal(out, saved["output"])
    assert torch.equal(eager, saved["output"])


if __name__ == "__main__":
    write()
