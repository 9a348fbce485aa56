"""Where the host time of one eager ``binattn.ops.binary_attention`` call goes (GPU).

``python benchmarks/op_host_profile.py [--shape B,H,N,D] [--calls N] [--pv-bits 8]``: calls the
op ``--calls`` times back to back under cProfile and prints the functions by own time, then the
host µs per call measured without the profiler (the GPU work of a call is shorter than its host
work at ViT-B, so queued calls measure the host). What it does not: time the kernels
(``benchmarks/gpu_attention.py``) or whole models (``benchmarks/e2e.py``).
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

import binattn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="64,12,197,64")
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--pv-bits", type=int, default=None)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    B, H, N, D = (int(s) for s in args.shape.split(","))
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))

    def call():
        return binattn.ops.binary_attention(q, k, v, pv_bits=args.pv_bits)

    for _ in range(10):
        call()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.calls):
        call()
    host = (time.perf_counter() - start) / args.calls * 1e6
    torch.cuda.synchronize()
    total = (time.perf_counter() - start) / args.calls * 1e6
    op_args = (q, k, v, None, None, False, None, "mean_abs", None, None, None, args.pv_bits,
               "sign", 1.0, 1.0, None)
    start = time.perf_counter()
    for _ in range(args.calls):
        torch.ops.binattn.binary_attention(*op_args)
    via_op = (time.perf_counter() - start) / args.calls * 1e6
    torch.cuda.synchronize()
    print("kernel paths:", binattn.ops.kernel_report())
    with cProfile.Profile() as prof:
        for _ in range(args.calls):
            call()
        torch.cuda.synchronize()
    pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)
    print(f"shape {(B, H, N, D)}: host {host:.1f} µs per call (issue loop), {total:.1f} µs "
          f"per call with the GPU drained; through torch.ops (the dispatcher) {via_op:.1f} µs")


if __name__ == "__main__":
    main()
