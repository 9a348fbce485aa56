"""Probe (GPU): where an eager call through ``torch.ops.binattn.binary_attention`` spends its time,
next to the direct call ``binattn.ops.binary_attention`` takes without gradients, and with a
gradient to record (the training path). Prints per-call ms and the profiler's top ops.
What it does not: time models (``benchmarks/e2e.py``)."""
from __future__ import annotations

import time

import torch
from torch.profiler import ProfilerActivity, profile

import binattn
from binattn.ops.options import AttentionOptions, AttentionTensors, op_args


def per_call_ms(fn, calls: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e3


def main() -> None:
    q, k, v = (torch.randn(64, 12, 197, 64, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    args = (q, k, v, *op_args(AttentionTensors(), AttentionOptions()))
    qg = q.clone().requires_grad_()
    calls = {"direct": lambda: binattn.ops.binary_attention(q, k, v),
             "torch.ops": lambda: torch.ops.binattn.binary_attention(*args),
             "torch.ops.default": lambda: torch.ops.binattn.binary_attention.default(*args),
             "with grad (fwd)": lambda: binattn.ops.binary_attention(qg, k, v),
             "with grad (fwd+bwd)": lambda: binattn.ops.binary_attention(qg, k, v).sum()
             .backward()}
    for name, fn in calls.items():
        print(f"{name:22s} {per_call_ms(fn):8.3f} ms per call", flush=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            calls["torch.ops"]()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
