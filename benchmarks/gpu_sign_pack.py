"""GPU study: the 16-byte-load sign-pack kernel with 1, 2 or 4 rows per thread, side by side.

Run on an H100/H200 with the shipped libraries: ``python benchmarks/gpu_sign_pack.py [--out DIR]``.
For each shape (B, H, N, D) of the attention benchmark, packs q (bf16) with every rows-per-thread
variant of the kernel, checks the outputs are bit-identical to the one-row kernel (bits, popcounts;
Σ|x| to float rounding), and prints the CUDA-graphed time and the effective read bandwidth of each;
writes ``gpu_sign_pack.json``. The dispatcher's rows-per-thread rule (``cuda_dispatch.vec_rows``)
comes from this table. What it does not: time the attention kernel (gpu_attention.py does).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

SHAPES = [(64, 12, 197, 64), (32, 16, 257, 64), (8, 16, 1024, 72), (4, 16, 4096, 64),
          (4, 16, 4096, 128), (1, 24, 4608, 128)]


def measure(shape, rows_options) -> dict:
    from binattn.tvm_kernels import cuda_dispatch as cd
    from binattn.tvm_kernels.cuda_bench import bench_ms, graphed

    B, H, N, D = shape
    x = torch.randn(B * H, N, D, device="cuda", dtype=torch.bfloat16)
    x32 = x.view(torch.int32).view(B * H, N, D // 8, 4)
    outs, row = {}, {"shape": list(shape), "us": {}, "tb_s": {}}
    for rows in rows_options:
        bits = torch.full((B * H, N, 8), -1, dtype=torch.int32, device="cuda")
        pops = torch.full((B * H, N), -1, dtype=torch.int32, device="cuda")
        abs_sum = torch.zeros(B * H, device="cuda")
        name = cd.vec_sign_pack_name("bfloat16", D, rows)
        call = lambda: cd._call(x.device, name, x32, bits, pops, abs_sum, 0, 1)  # noqa: E731
        call()
        torch.cuda.synchronize()
        outs[rows] = (bits.clone(), pops.clone())
        ms = bench_ms(graphed(call))
        row["us"][rows] = ms * 1e3
        row["tb_s"][rows] = x.numel() * 2 / (ms * 1e-3) / 1e12
    first = outs[rows_options[0]]
    row["identical"] = all(torch.equal(first[0], o[0]) and torch.equal(first[1], o[1])
                           for o in outs.values())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    from binattn.tvm_kernels import cuda_dispatch as cd

    _, entry = cd._library(torch.device("cuda"))
    options = tuple(entry.get("sign_pack_vec_rows", (1,)))
    rows = [measure(s, options) for s in SHAPES]
    print(f"device: {torch.cuda.get_device_name()}\n")
    print("| shape (B,H,N,D) | " + " | ".join(f"{r} row(s)/thread µs (TB/s)" for r in options)
          + " | identical |")
    print("|---|" + "---|" * (len(options) + 1))
    for r in rows:
        cells = " | ".join(f"{r['us'][o]:.1f} ({r['tb_s'][o]:.2f})" for o in options)
        print(f"| {tuple(r['shape'])} | {cells} | {r['identical']} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_sign_pack.json").write_text(json.dumps(
        {"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
