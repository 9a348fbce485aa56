"""Design-space sweep of the simulated CAM accelerator vs the bf16 baseline (no model needed).

Per query row of one head (d=64): cycles and energy against sequence length N for the CAM
engine with top-32, the CAM engine dense (no top-k), and the baseline, at 45 and 7 nm; prints
a ratio table and writes ``asic_sweep.png``. Analytical (``binattn.hw_targets.cost_model``):
nothing is timed, so it runs in about a second.

    python benchmarks/asic_sweep.py [--out out/asic_sweep.png]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from binattn.hw_targets import AttentionShape, baseline_for, cam_query_cost, get_preset
from binattn.hw_targets.cost_model import baseline_query_cost

SEQS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
TOP_K = 32


def sweep(node: int) -> dict[str, list[tuple[float, float]]]:
    """``{engine: [(cycles, energy_nj) per N]}`` at ``node`` nm."""
    cam = get_preset(f"had-cam-{node}nm")
    base = baseline_for(cam)
    rows: dict[str, list[tuple[float, float]]] = {"cam top-32": [], "cam dense": [], "baseline": []}
    for n in SEQS:
        for name, cost in (
                ("cam top-32", cam_query_cost(cam, AttentionShape.square(n, 64, 1, TOP_K))),
                ("cam dense", cam_query_cost(cam, AttentionShape.square(n, 64, 1))),
                ("baseline", baseline_query_cost(base, AttentionShape.square(n, 64, 1)))):
            rows[name].append((cost.cycles, cost.energy_nj))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/asic_sweep.png"))
    args = parser.parse_args()
    console = Console()
    results = {node: sweep(node) for node in (45, 7)}
    table = Table(title=f"per query row, d=64: baseline ÷ CAM top-{TOP_K} (>1 = CAM better)")
    for col in ("N", "cycles 45nm", "energy 45nm", "energy 7nm", "CAM top-32 nJ 45nm",
                "baseline nJ 45nm", "CAM dense ÷ top-32 energy"):
        table.add_column(col, justify="right")
    for i, n in enumerate(SEQS):
        r45, r7 = results[45], results[7]
        table.add_row(str(n), f"{r45['baseline'][i][0] / r45['cam top-32'][i][0]:.2f}×",
                      f"{r45['baseline'][i][1] / r45['cam top-32'][i][1]:.1f}×",
                      f"{r7['baseline'][i][1] / r7['cam top-32'][i][1]:.1f}×",
                      f"{r45['cam top-32'][i][1]:.1f}", f"{r45['baseline'][i][1]:.1f}",
                      f"{r45['cam dense'][i][1] / r45['cam top-32'][i][1]:.1f}×")
    console.print(table)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for node, style in ((45, "-"), (7, "--")):
        for name, color in (("cam top-32", "tab:blue"), ("cam dense", "tab:orange"),
                            ("baseline", "tab:red")):
            values = results[node][name]
            axes[0].plot(SEQS, [c for c, _ in values], style, color=color, label=f"{name} {node}nm")
            axes[1].plot(SEQS, [e for _, e in values], style, color=color, label=f"{name} {node}nm")
    for ax, label in ((axes[0], "cycles per query row"), (axes[1], "energy per query row (nJ)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length N (d=64)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle("simulated HAD-style CAM accelerator vs bf16 attention baseline (analytical)")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    console.print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
