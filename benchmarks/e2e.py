"""End-to-end benchmark: a binarized model against its original, as a user times it.

Run on a GPU: ``python benchmarks/e2e.py [--out DIR] [--quick] [--models vit_b,vit_b_1024]``.
Side by side in one run, per model and path (bf16, inference, random weights):

- paths: the original model eager (cuDNN/flash SDPA inside), ``torch.compile(model)``,
  ``gm = binattn.binarize(model, (x,))`` eager, ``torch.compile(gm)`` (default Inductor, binattn's
  ops as extern kernels), and ``torch.compile(model, backend="binattn")``;
- columns: ms per forward (median, ``cuda/bench.bench_ms``), host syncs per forward (profiler:
  ``aten::_local_scalar_dense`` reads and ``cudaStreamSynchronize``/``cudaDeviceSynchronize``
  calls, less those of profiling an empty call), copies per forward
  (``aten::clone/copy_/contiguous/_to_copy`` of a tensor at least as large as one layer's q),
  attention kernel ms (GPU time of kernels whose name says attention:
  binattn's sign-pack and attention kernels, SDPA's flash/cuDNN/efficient kernels), time outside
  attention (ms − attention ms) and its ratio to the original's on the same path kind (eager to
  eager, compiled to compiled; the issue's target is within 5 %);
- a second table: one ``binattn.ops.binary_attention`` call at (64, 12, 197, 64) eager and
  CUDA-graphed, and its host cost (eager − graphed; target ≤ 20 µs).

Prints the tables (device named) and writes ``e2e.json`` into ``--out``. What it does not: check
correctness (tests do) or train.
"""
from __future__ import annotations

import argparse
import json
import re
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from binattn.tvm_kernels.cuda.bench import bench_ms

ATTENTION_KERNEL = re.compile(r"binattn|sdpa|fmha|flash|attention|attn", re.IGNORECASE)
COPY_OPS = ("aten::clone", "aten::copy_", "aten::contiguous", "aten::_to_copy")
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize")
MODELS = {  # name: (timm kwargs, batch)
    "vit_b": ({"model_name": "vit_base_patch16_224"}, 64),
    "vit_b_1024": ({"model_name": "vit_base_patch16_224", "img_size": 1024}, 4),
}


def _profiled(fn: Callable):
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
                 record_shapes=True) as prof:
        fn()
        torch.cuda.synchronize()
    return prof.events()


def _syncs(events) -> int:
    return sum(1 for e in events
               if e.name == "aten::_local_scalar_dense" or e.name in SYNC_CALLS)


def profile_counts(fn: Callable, big: int) -> dict:
    """Host syncs (beyond those of profiling an empty call: the measurement's own), large
    copies and attention-kernel GPU ms of one call of ``fn``."""
    fn()
    torch.cuda.synchronize()
    events = _profiled(fn)
    syncs = _syncs(events) - _syncs(_profiled(lambda: None))
    copies = sum(1 for e in events if e.name in COPY_OPS and any(
        s and torch.Size(s).numel() >= big for s in e.input_shapes))
    attention_us = sum(e.device_time for e in events  # kernels, not annotations ("a::b")
                       if e.device_type == torch.autograd.DeviceType.CUDA
                       and "::" not in e.name and ATTENTION_KERNEL.search(e.name))
    return {"host_syncs": max(syncs, 0), "copies": copies, "attention_ms": attention_us / 1e3}


def model_paths(name: str, quick: bool) -> tuple[dict[str, Callable], torch.Tensor, int]:
    import timm

    import binattn
    from binattn import backend

    backend.register()  # where binattn is on PYTHONPATH, not installed (no entry point)
    kwargs, batch = MODELS[name]
    if quick:
        batch = max(1, batch // 8)
    torch.manual_seed(0)
    model = timm.create_model(pretrained=False, **kwargs).eval().to("cuda", torch.bfloat16)
    size = kwargs.get("img_size", 224)
    x = torch.randn(batch, 3, size, size, device="cuda", dtype=torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = binattn.binarize(model, (x,))
    dim = model.embed_dim
    big = batch * model.patch_embed.num_patches * dim // 3  # ~ one layer's q
    paths = {"original eager": model, "original compiled": torch.compile(model),
             "binarized eager": gm, "binarized compiled": torch.compile(gm),
             "backend=binattn": torch.compile(model, backend="binattn")}
    return paths, x, big


def run_model(name: str, reps: int, quick: bool) -> list[dict]:
    paths, x, big = model_paths(name, quick)
    rows = []
    for path, fn in paths.items():
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call = lambda fn=fn: fn(x)  # noqa: E731
            ms = bench_ms(call, reps)
            counts = profile_counts(call, big)
        row = {"model": name, "batch": x.shape[0], "image": x.shape[-1], "path": path, "ms": ms,
               **counts, "outside_ms": ms - counts["attention_ms"]}
        rows.append(row)
        print(f"  {name:11s} {path:20s} {ms:8.3f} ms  syncs {counts['host_syncs']:3d}  copies "
              f"{counts['copies']:3d}  attention {counts['attention_ms']:.3f} ms", flush=True)
    base = {kind: next(r for r in rows if r["path"] == f"original {kind}")
            for kind in ("eager", "compiled")}
    for row in rows:
        kind = "eager" if row["path"].endswith("eager") else "compiled"
        row["vs_original"] = base[kind]["ms"] / row["ms"]
        row["outside_vs_original"] = row["outside_ms"] / base[kind]["outside_ms"]
    return rows


def op_call_cost(reps: int) -> dict:
    """One op call at ViT-B's shape: eager µs, CUDA-graphed µs, their difference."""
    import binattn

    q, k, v = (torch.randn(64, 12, 197, 64, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    call = lambda: binattn.ops.binary_attention(q, k, v)  # noqa: E731
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    eager = bench_ms(call, reps) * 1e3
    graphed = bench_ms(graph.replay, reps) * 1e3
    return {"shape": [64, 12, 197, 64], "eager_us": eager, "graphed_us": graphed,
            "host_cost_us": eager - graphed}


def table(rows: list[dict], op: dict, device: str) -> str:
    lines = [f"device: {device}", "",
             "| model | batch | image | path | ms | × original | host syncs | copies | "
             "attention ms | outside ms | outside / original's |", "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['image']}² | {r['path']} | "
                     f"{r['ms']:.2f} | {r['vs_original']:.2f} | {r['host_syncs']} | "
                     f"{r['copies']} | {r['attention_ms']:.2f} | {r['outside_ms']:.2f} | "
                     f"{r['outside_vs_original']:.3f} |")
    lines += ["", "| op call (64,12,197,64) | eager µs | CUDA-graphed µs | host cost µs |",
              "|---|---|---|---|",
              f"| binattn.ops.binary_attention | {op['eager_us']:.1f} | {op['graphed_us']:.1f} | "
              f"{op['host_cost_us']:.1f} |"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--quick", action="store_true", help="1/8 of the batch, fewer reps")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--reps", type=int, default=300,
                        help="bench_ms's budget (ms of repetitions with triton)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/e2e.py needs a CUDA GPU")
    reps = 50 if args.quick else args.reps
    device = torch.cuda.get_device_name()
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; choose from {sorted(MODELS)}")
    op = op_call_cost(reps)
    print(f"op call: {op}", flush=True)
    rows = [row for name in names for row in run_model(name, reps, args.quick)]
    text = table(rows, op, device)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "e2e.json").write_text(json.dumps({"device": device, "rows": rows, "op": op},
                                                  indent=1))


if __name__ == "__main__":
    main()
