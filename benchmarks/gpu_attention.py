"""GPU benchmark: binattn's TVM CUDA binary attention vs torch SDPA (cuDNN and FLASH backends).

Run on an H100/H200: ``python benchmarks/gpu_attention.py [--out DIR] [--quick] [--backward]``. Side
by side in one run, at the issue's shapes, bf16, forward, non-causal: the time of one binattn call
(``binattn.ops.binary_attention``: sign-pack of q and k, scales and the fused kernel, i.e. what a
user pays) and of the fused kernel alone, SDPA with the cuDNN and the FLASH backends, the effective
TFLOP/s (4·B·H·N²·D / t), ratios vs cuDNN against the issue's targets, and a roofline line: the time
the exponential unit (4.17 T exp/s), the 16-bit mma.sync PV and the 1-bit QKᵀ would need at their
measured ceilings (lab/CEILINGS.md) and the share of it each kernel reaches. A second table times
relative-position-biased calls (ViT-B, ViT-L/384, BEiT-L/512 grids): the bias table looked up inside
the kernel vs the bias gathered by torch first, and SDPA with the gathered bias as its mask. Prints
the tables, writes ``gpu_attention.json`` and ``gpu_attention.png`` into ``--out``.

``--backward``: forward + backward instead (binattn's training path, SDPA cuDNN / FLASH, the
reference VJP where it fits), ms and peak extra memory, at the backward issue's shapes.

What it does not: check correctness (tests/test_gpu_kernels.py does) or tune.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

from binattn.tvm_kernels.cuda.bench import measure, measure_backward, measure_relpos

SHAPES = [  # (B, H, N, D), name, target speed-up over cuDNN
    ((64, 12, 197, 64), "ViT-B/16 224²", 1.5),
    ((8, 16, 1024, 72), "DiT-XL/2 512²", None),
    ((4, 16, 4096, 64), "N=4096 D=64", 2.5),
    ((4, 16, 4096, 128), "N=4096 D=128", 2.0),
    ((1, 16, 16384, 64), "N=16384 D=64", 2.5),
    ((1, 24, 4608, 128), "Flux-like", 2.0),
    ((32, 16, 257, 64), "ViT-L/14 224² (extra)", None),
    ((32, 12, 512, 64), "BERT-base 512 (extra)", None),
]
BACKWARD_SHAPES = [  # (B, H, N, D), name, target speed-up of fwd+bwd over cuDNN's
    ((4, 16, 4096, 64), "N=4096 D=64", 1.3),
    ((8, 16, 1024, 72), "DiT-XL/2 512²", 1.3),
    ((1, 24, 4608, 128), "Flux-like", 1.3),
    ((64, 12, 197, 64), "ViT-B/16 224² (extra)", None),
    ((1, 16, 16384, 64), "N=16384 D=64 (memory)", None),
]
RELPOS_SHAPES = [  # (B, H, N, D), token grid (+1 cls token), name
    ((64, 12, 197, 64), (14, 14), "ViT-B/16 224² + relpos"),
    ((16, 16, 577, 64), (24, 24), "ViT-L/16 384² + relpos"),
    ((8, 16, 1025, 64), (32, 32), "BEiT-L/16 512² + relpos"),
]


def tflops(shape, ms):
    B, H, N, D = shape
    return None if ms is None else 4 * B * H * N * N * D / (ms * 1e-3) / 1e12


def fmt(x, spec=".1f"):
    return "–" if x is None else format(x, spec)


def report(rows, device: str) -> str:
    lines = [f"device: {device}", "",
             "| shape (B,H,N,D) | binattn µs | fused kernel µs | sign-pack µs | cuDNN µs "
             "| FLASH µs | binattn TFLOP/s | cuDNN TFLOP/s | × cuDNN | × FLASH | target "
             "| exp-bound µs | "
             "share of bound | pv_bits=8 µs |", "|" + "---|" * 14]
    for r, (_, name, target) in zip(rows, SHAPES):
        s = tuple(r["shape"])
        ratio = r["cudnn_ms"] / r["binattn_ms"] if r["cudnn_ms"] else None
        ratio_fa = r["flash_ms"] / r["binattn_ms"] if r["flash_ms"] else None
        bound = max(r["ceil_us"].values())
        tgt = ("–" if target is None
               else f"≥{target}× {'met' if ratio and ratio >= target else 'missed'}")
        lines.append(
            f"| {s} {name} | {r['binattn_ms']*1e3:.1f} | {r['fused_ms']*1e3:.1f} | "
            f"{r['sign_pack_ms']*1e3:.1f} | {fmt(r['cudnn_ms'] and r['cudnn_ms']*1e3)} | "
            f"{fmt(r['flash_ms'] and r['flash_ms']*1e3)} | {tflops(s, r['binattn_ms']):.0f} | "
            f"{fmt(tflops(s, r['cudnn_ms']), '.0f')} | {fmt(ratio, '.2f')} | "
            f"{fmt(ratio_fa, '.2f')} | "
            f"{tgt} | {bound:.1f} | {bound / (r['binattn_ms']*1e3):.0%} | "
            f"{r['pv8_ms']*1e3:.1f} |")
    lines += ["", "binattn µs = one binattn.ops.binary_attention call (sign-pack of q and k, "
              "scales, fused kernel) and SDPA µs, all CUDA-graphed; eager (Python dispatch) µs: "
              + ", ".join(f"{r['eager_ms']*1e3:.0f}" for r in rows) + f"; path: {rows[0]['path']}",
              "", "pv_bits=8 µs = the same call with 8-bit P and V (u8 P × s8 V on the 8-bit "
              "tensor cores, two passes over the keys, after two launches that quantise V), path: "
              + rows[0]["pv8_path"]]
    return "\n".join(lines)


def backward_report(rows, device: str) -> str:
    """The ``--backward`` table: forward + backward ms and peak extra memory per path."""
    lines = [f"device: {device}", "", "Forward + backward of one attention call (bf16, eager, "
             "gradients of q, k, v): binattn's training path, SDPA cuDNN / FLASH, and the "
             "reference VJP that ran before (N×N float32 tensors)", "",
             "| shape (B,H,N,D) | binattn ms | cuDNN ms | FLASH ms | reference ms "
             "| × cuDNN | target | binattn MiB | cuDNN MiB | memory / cuDNN's "
             "| reference MiB |", "|" + "---|" * 11]
    mib = lambda b: None if b is None else b / 2**20  # noqa: E731
    for r, (_, name, target) in zip(rows, BACKWARD_SHAPES):
        ratio = r["cudnn_ms"] / r["binattn_ms"] if r["cudnn_ms"] and r["binattn_ms"] else None
        mem = (r["binattn_bytes"] / r["cudnn_bytes"]
               if r["cudnn_bytes"] and r["binattn_bytes"] else None)
        tgt = ("–" if target is None
               else f"≥{target}× {'met' if ratio and ratio >= target else 'missed'}")
        lines.append(
            f"| {tuple(r['shape'])} {name} | {fmt(r['binattn_ms'], '.3f')} | "
            f"{fmt(r['cudnn_ms'], '.3f')} | {fmt(r['flash_ms'], '.3f')} | "
            f"{fmt(r.get('reference_ms'), '.2f')} | {fmt(ratio, '.2f')} | {tgt} | "
            f"{fmt(mib(r['binattn_bytes']), '.0f')} | {fmt(mib(r['cudnn_bytes']), '.0f')} | "
            f"{fmt(mem, '.2f')} | {fmt(mib(r.get('reference_bytes')), '.0f')} |")
    lines += ["", f"binattn path (forward, backward): {rows[0]['path']}"]
    return "\n".join(lines)


def relpos_report(rows) -> str:
    lines = ["Relative-position bias (bf16, graphed, gather included): the table looked up in "
             "the kernel vs the bias gathered by torch first, no bias, and SDPA with the "
             "gathered bias as its float mask", "",
             "| shape (B,H,N,D) | table rows | in-kernel table µs | gathered bias µs "
             "| no bias µs | SDPA cuDNN + mask µs | SDPA efficient + mask µs "
             "| gathered / table | "
             "× best SDPA | pv_bits=8 µs |", "|" + "---|" * 10]
    for r, (_, _, name) in zip(rows, RELPOS_SHAPES):
        best = min((t for t in (r["cudnn_ms"], r["efficient_ms"]) if t), default=None)
        kernel = "" if r["table_kernel"] else " (gathered: table too large)"
        lines.append(
            f"| {tuple(r['shape'])} {name} | {r['table_rows']}{kernel} | {r['table_ms']*1e3:.1f} | "
            f"{r['gathered_ms']*1e3:.1f} | {r['no_bias_ms']*1e3:.1f} | "
            f"{fmt(r['cudnn_ms'] and r['cudnn_ms']*1e3)} | "
            f"{fmt(r['efficient_ms'] and r['efficient_ms']*1e3)} | "
            f"{r['gathered_ms'] / r['table_ms']:.2f} | "
            f"{fmt(best and best / r['table_ms'], '.2f')} | "
            f"{r['pv8_table_ms']*1e3:.1f} |")
    return "\n".join(lines)


def plot(rows, path: Path, device: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{n}\n{tuple(r['shape'])}" for r, (_, n, _) in zip(rows, SHAPES)]
    x = range(len(rows))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 5))
    for off, key, label in ((-0.25, "binattn_ms", "binattn (1-bit QK)"),
                            (0, "cudnn_ms", "SDPA cuDNN"), (0.25, "flash_ms", "SDPA FLASH")):
        ax1.bar([i + off for i in x], [tflops(tuple(r["shape"]), r[key]) or 0 for r in rows],
                width=0.25, label=label)
    ax1.set_xticks(list(x), names, fontsize=7)
    ax1.set_ylabel("effective TFLOP/s (4·B·H·N²·D / t)")
    ax1.legend()
    ax1.set_title(f"forward, bf16 — {device}")
    ratios = [r["cudnn_ms"] / r["binattn_ms"] if r["cudnn_ms"] else 0 for r in rows]
    ax2.bar(list(x), ratios, color="tab:blue", label="binattn speed-up over cuDNN")
    for i, (_, _, target) in enumerate(SHAPES):
        if target:
            ax2.hlines(target, i - 0.4, i + 0.4, colors="red", label="target" if i == 0 else None)
    share = [max(r["ceil_us"].values()) / (r["binattn_ms"] * 1e3) for r in rows]
    ax2.plot(list(x), share, "k^", label="share of exp/PV/QK ceiling reached")
    ax2.axhline(1.0, color="grey", lw=0.5)
    ax2.set_xticks(list(x), names, fontsize=7)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    parser.add_argument("--quick", action="store_true", help="first two shapes only")
    parser.add_argument("--backward", action="store_true",
                        help="time forward + backward (the training path) and its peak memory "
                             "instead; writes gpu_attention_backward.json/.md")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_attention: no CUDA GPU here; run it on an H100/H200", file=sys.stderr)
        return 2
    device = f"{torch.cuda.get_device_name()} (torch {torch.__version__}, {platform.node()})"
    if args.backward:
        shapes = BACKWARD_SHAPES[:2] if args.quick else BACKWARD_SHAPES
        rows = []
        for shape, _, _ in shapes:
            rows.append(measure_backward(shape))
            print(json.dumps(rows[-1]), flush=True)
        table = backward_report(rows, device)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_attention_backward.json").write_text(json.dumps(
            {"device": device, "rows": rows}, indent=1))
        (args.out / "gpu_attention_backward.md").write_text(table + "\n")
        print(table)
        return 0
    rows = [measure(shape) for shape, _, _ in (SHAPES[:2] if args.quick else SHAPES)]
    relpos_rows = [measure_relpos(shape, grid)
                   for shape, grid, _ in (RELPOS_SHAPES[:1] if args.quick else RELPOS_SHAPES)]
    table = report(rows, device) + "\n\n" + relpos_report(relpos_rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_attention.json").write_text(json.dumps(
        {"device": device, "rows": rows, "relpos_rows": relpos_rows}, indent=1))
    (args.out / "gpu_attention.md").write_text(table + "\n")
    plot(rows, args.out / "gpu_attention.png", device)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
