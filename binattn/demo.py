"""The end-to-end demo on the built-in ViT (``make demo`` / ``binattn demo``).

Each step is one function taking a shared ``DemoState`` and printing with rich; ``STEPS`` lists
them in order. Steps: check the ops against the reference; (as features land) find and rewrite
the attention, train briefly, build and run TVM kernels, compare speed/accuracy with full
precision, emit the ASIC descriptor. What it does not: anything not shown to the user.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console
from rich.table import Table

from . import ops
from .models import demo_vit

# wide enough for the site and ASIC tables when the output is not a terminal
console = Console(width=None if sys.stdout.isatty() else 150)


@dataclass
class DemoState:
    out_dir: Path
    quick: bool = False
    model: torch.nn.Module = field(default_factory=demo_vit)
    results: dict[str, Any] = field(default_factory=dict)


def step_check_ops(state: DemoState) -> None:
    """Exactness of sign_pack + popcount_scores, and binary_attention vs a plain float version."""
    cfg = state.model.cfg
    n = 1 + cfg.grid[0] * cfg.grid[1]
    d = cfg.dim // cfg.heads
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, cfg.heads, n, d, generator=gen) for _ in range(3))
    q_bits, _ = ops.sign_pack(q)
    k_bits, _ = ops.sign_pack(k)
    scores = ops.popcount_scores(q_bits, k_bits, d)
    sign = lambda x: torch.where(x >= 0, 1.0, -1.0)  # noqa: E731
    exact = bool((scores == (sign(q) @ sign(k).transpose(-1, -2)).to(torch.int32)).all())
    s = q.abs().mean((-2, -1), keepdim=True) * k.abs().mean((-2, -1), keepdim=True) * d ** -0.5
    plain = torch.softmax(s * (sign(q) @ sign(k).transpose(-1, -2)), -1) @ v
    err = (ops.binary_attention(q, k, v) - plain).abs().max().item()
    table = Table(title=f"binattn ops on the demo shapes (B=2, H={cfg.heads}, N={n}, D={d})")
    table.add_column("check")
    table.add_column("result")
    table.add_row("popcount_scores == sign(q)·sign(k)ᵀ",
                  "[green]exact[/]" if exact else "[red]MISMATCH[/]")
    table.add_row("binary_attention vs float math, max |err|", f"{err:.2e}")
    console.print(table)
    if not exact or err > 1e-5:
        raise SystemExit("demo: binattn ops disagree with the reference")
    state.results["ops_exact"] = exact


def step_cuda_kernels(state: DemoState) -> None:
    """CUDA kernels: the packaged TVM-built libraries load with apache-tvm-ffi (run on a GPU if
    any)."""
    from .tvm_kernels.cuda import build as cuda_build, dispatch as cuda_dispatch

    kernel_dir = cuda_dispatch.package_kernel_dir()
    manifest = cuda_build.read_manifest(kernel_dir) or {}
    table = Table(title="prebuilt CUDA kernels (TVMScript → CUDA → nvcc; no TVM needed to run)")
    for col in ("arch", "file", "MB", "kernels", "loads here"):
        table.add_column(col)
    for arch, entry in sorted(manifest.get("libraries", {}).items()):
        try:
            import tvm_ffi
            module = tvm_ffi.load_module(str(kernel_dir / entry["file"]))
            loads = "[green]yes[/]" if module["binattn_popcount_scores"] is not None else "no"
        except Exception as exc:  # noqa: BLE001 - shown to the user, not fatal on a CPU machine
            loads = f"[red]{type(exc).__name__}[/]"
        n = (sum(len(v) for v in entry["attention"].values()) * 2 + len(entry["sign_pack"])
             + len(entry.get("sign_pack_vec", ())) + 1)
        table.add_row(arch, entry["file"], f"{entry['bytes'] / 1e6:.1f}", str(n), loads)
    console.print(table)
    if torch.cuda.is_available():
        q, k, v = (torch.randn(2, 4, 197, 64, device="cuda", dtype=torch.bfloat16)
                   for _ in range(3))
        out = ops.binary_attention(q, k, v)
        with ops.reference_only():
            ref = ops.binary_attention(q, k, v)
        err = (out.float() - ref.float()).abs().max().item()
        console.print(f"GPU {torch.cuda.get_device_name()}: {ops.kernel_report()} "
                      f"max |err| {err:.2e}")
        state.results["cuda_err"] = err
    else:
        console.print("no GPU here: the kernels run on H100/H200 (docs/gpu.md has the measured "
                      "table)")
    state.results["cuda_archs"] = sorted(manifest.get("libraries", {}))


def step_asic(state: DemoState) -> None:
    """ASIC: the binarized ViT on the simulated HAD-style CAM accelerator (descriptor +
    comparison)."""
    from .hw_targets.demo import run as cost_on_cam

    state.results["asic"] = cost_on_cam(state.model, state.out_dir, console)


def step_binarize(state: DemoState) -> None:
    """Binarize pass: find every attention of the built-in ViT and rewrite it (site table)."""
    from .binarize_pass import BinarizeConfig, binarize, find_sites

    images = state.model.eval().example_inputs()
    gm = binarize(state.model, images, BinarizeConfig(bias="relpos"))
    report = gm.meta["binattn_report"]
    console.print(report.table())
    with torch.no_grad():
        binary = gm(*images)
        for site in find_sites(gm):
            site.mode = "float"
        float_err = (gm(*images) - state.model(*images)).abs().max().item()
        for site in find_sites(gm):
            site.mode = "binary"
    program = torch.export.export(gm, images, strict=False)
    path = state.out_dir / "vit_binary.pt2"
    torch.export.save(program, str(path))
    reloaded = torch.export.load(str(path)).module()(*images)
    n_ops = sum(n.target is torch.ops.binattn.binary_attention.default
                for n in program.graph.nodes)
    console.print(f"float mode reproduces the original model: max |err| {float_err:.1e}; "
                  f"wrote {path} ({n_ops} × binattn.binary_attention), reloaded max |err| "
                  f"{(reloaded - binary).abs().max().item():.1e}; learned relpos biases: "
                  f"{sum(p.numel() for n, p in gm.named_parameters() if 'binattn_bias' in n)} "
                  "parameters (untrained until the training step)")
    state.results["binarized"] = gm
    state.results["sites"] = report.to_dict()


def step_cpu_kernels(state: DemoState) -> None:
    """CPU kernels: TVM builds the fused binary-attention kernels; speed vs SDPA and the
    reference."""
    from .tvm_kernels.cpu import bench as cpu_bench

    cfg = state.model.cfg
    n, d = 1 + cfg.grid[0] * cfg.grid[1], cfg.dim // cfg.heads
    shapes = [("demo ViT", (8, cfg.heads, n, d)), ("long sequence", (1, 8, 2048, 64))]
    table = Table(title="fused binary attention (TVM, LLVM) vs SDPA fp32, median ms")
    for col in ("shape", "B×H×N×D", "contender", "median ms", "vs SDPA fp32", "max |err|"):
        table.add_column(col)
    worst = 0.0
    for label, (b, h, n_, d_) in shapes:
        with console.status(f"{label}: building the LLVM kernels (first run only; cached)…"):
            row = cpu_bench.bench_attention(b, h, n_, d_, repeat=3 if state.quick else 7)
        for name, t in row.timings.items():
            err = row.max_abs_err.get(name)
            table.add_row(label, f"{b}×{h}×{n_}×{d_}", name, f"{t.median_ms:.2f}",
                          f"{row.ratio('SDPA fp32', name):.2f}×",
                          "" if err is None else f"{err:.1e}")
        worst = max(worst, row.max_abs_err.get("binattn fp32-PV", float("nan")))
        state.results.setdefault("cpu_kernels", {})[label] = {
            k: v.median_ms for k, v in row.timings.items()}
    console.print(table)
    console.print(f"kernel path: {row.path.get('binattn')}; {cpu_bench.machine_load()} "
                  "(short sequences are overhead-bound; benchmarks/cpu_attention.py sweeps N)")
    if not worst < 1e-4:
        raise SystemExit("demo: the TVM CPU kernel disagrees with the reference")


def step_train(state: DemoState) -> None:
    """Training: a binarized digits ViT recovers its accuracy by QAT + self-distillation."""
    from .train.quickstart import digits_quickstart

    r = digits_quickstart(fp_steps=150 if state.quick else 600,
                          qat_steps=40 if state.quick else 150)
    table = Table(title="digits ViT (scikit-learn's 1797 real 8×8 digits), held-out 20 %")
    table.add_column("model")
    table.add_column("accuracy")
    table.add_row("full precision", f"{100 * r.fp_accuracy:.1f} %")
    table.add_row("binary Q/K, swapped in, no training", f"{100 * r.swap_accuracy:.1f} %")
    table.add_row(f"binary Q/K after {r.steps} QAT steps (BinaryAttention recipe)",
                  f"{100 * r.trained_accuracy:.1f} %")
    console.print(table)
    k = max(len(r.losses) // 6, 1)
    first, last = sum(r.losses[:k]) / k, sum(r.losses[-k:]) / k
    console.print(f"distillation loss {first:.3f} → {last:.3f} (mean of first/last {k} steps); "
                  "benchmarks/train_digits.py runs the cross-validated study (docs/training.md)")
    if not last < first:
        raise SystemExit("demo: training did not lower the loss")
    state.results["train"] = {"fp": r.fp_accuracy, "swap": r.swap_accuracy,
                              "trained": r.trained_accuracy}


STEPS: list[Callable[[DemoState], None]] = [
    step_check_ops,
    step_binarize,
    step_train,
    step_cpu_kernels,
    step_cuda_kernels,
    step_asic,
]


def run_demo(out_dir: Path, quick: bool = False) -> DemoState:
    """Run every step in order, timing each."""
    torch.manual_seed(0)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = DemoState(out_dir=out_dir, quick=quick)
    for step in STEPS:
        title = " ".join(step.__doc__.split("\n\n")[0].split())  # the first paragraph
        console.rule(f"[bold]{title}")
        start = time.perf_counter()
        step(state)
        console.print(f"[dim]{step.__name__}: {time.perf_counter() - start:.1f} s[/]")
    return state
