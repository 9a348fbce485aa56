"""Human-readable views of a target descriptor: a rich comparison table, a per-site table and a
PNG with the energy and area breakdown by module (CAM engine vs baseline).

What it does not: cost anything (it reads the descriptor dict only), so a descriptor written
earlier, or by another tool that follows the schema, renders the same way.
"""
from __future__ import annotations

from pathlib import Path

from rich.table import Table

from .._files import atomic_output
from .hardware import from_dict

def comparison_table(doc: dict) -> Table:
    """Totals of the CAM engine vs the baseline, our reductions beside HAD's."""
    ours, base = doc["totals"], doc["baseline"]
    had = doc.get("reference", {}).get("had", {})
    table = Table(title=f"{doc['target']} vs {doc['baseline_hardware']['name']}"
                        + (f" — {doc['model']}" if doc.get("model") else ""))
    for col in ("metric", doc["target"], doc["baseline_hardware"]["name"], "reduction",
                "HAD paper"):
        table.add_column(col, justify="right" if col != "metric" else "left")
    table.add_row("cycles", f"{ours['cycles']:,.0f}", f"{base['cycles']:,.0f}",
                  f"speed-up {doc.get('speedup', 0):.2f}×", "–")
    table.add_row("throughput per mm²", "", "", f"×{doc.get('iso_area_speedup', 0):.2f}", "–")
    table.add_row("energy (nJ)", f"{ours['energy_nj']:,.1f}", f"{base['energy_nj']:,.1f}",
                  f"{doc.get('energy_reduction', 0):.1%}", "–")
    table.add_row("avg power (mW)", f"{ours['power_mw']:,.1f}", f"{base['power_mw']:,.1f}",
                  f"{doc['power_reduction']:.1%}", f"{had.get('power_reduction', 0):.0%}")
    table.add_row("area (mm²)", f"{ours['area_mm2']:.4f}", f"{base['area_mm2']:.4f}",
                  f"{doc['area_reduction']:.1%}", f"{had.get('area_reduction', 0):.0%}")
    if "calibration" in doc:
        cal = doc["calibration"]
        ref, mine, err = cal["reference"], cal["ours"], cal["relative_error"]
        table.add_row("calib. cycles / query", f"{mine['cycles']:.0f}", "", f"{err['cycles']:+.1%}",
                      f"CAMformer {ref['cycles']}")
        table.add_row("calib. energy / query (nJ)", f"{mine['energy_nj']:.2f}", "",
                      f"{err['energy_nj']:+.1%}", f"CAMformer {ref['energy_nj']}")
        table.add_row("calib. area (mm²)", f"{mine['area_mm2']:.4f}", "",
                      f"{err['area_mm2']:+.1%}", f"CAMformer {ref['area_mm2']}")
    return table


def sites_table(doc: dict, limit: int = 40) -> Table:
    """One row per site: shape, top-k, tiles, cycles and energy on both engines."""
    table = Table(title="per-site mapping")
    for col in ("#", "layer", "B·H·Nq × Nk × D", "top-k", "key tiles", "cycles", "energy nJ",
                "baseline cycles", "baseline nJ"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for site in doc["sites"][:limit]:
        s, m = site["shape"], site["mapping"]
        table.add_row(str(site["index"]), site["layer"],
                      f"{s['B']}·{s['Hq']}·{s['Nq']} × {s['Nk']} × {s['D']}",
                      str(site["top_n"] or "dense"), f"{m['key_tiles']}×{m['column_passes']}",
                      f"{site['cycles']:,.0f}", f"{site['energy_nj']:,.1f}",
                      f"{site['baseline']['cycles']:,.0f}", f"{site['baseline']['energy_nj']:,.1f}")
    if len(doc["sites"]) > limit:
        table.caption = f"{len(doc['sites']) - limit} more sites in the JSON"
    return table


def _area_breakdown(hw_dict: dict) -> dict[str, float]:
    """Area (mm²) of every block of a descriptor's hardware, instances included."""
    hw = from_dict(hw_dict)
    return {name: hw.block_area_um2(name) / 1e6 for name in hw.blocks}


def _stacked(ax, names, data: tuple[dict, dict], colors: dict, share: bool, unit: str,
             title: str) -> None:
    """Stacked bars of ``data`` (module → value) per engine; ``share`` plots percentages."""
    totals = [sum(d.values()) for d in data]
    bottoms = [0.0, 0.0]
    for module in colors:
        values = [d.get(module, 0.0) / (t if share and t else 1) * (100 if share else 1)
                  for d, t in zip(data, totals)]
        ax.bar(names, values, bottom=bottoms, label=module, color=colors[module])
        bottoms = [b + v for b, v in zip(bottoms, values)]
    for x, (top, total) in enumerate(zip(bottoms, totals)):
        ax.text(x, top, f"{total:,.4g} {unit}", ha="center", va="bottom")
    ax.set_ylabel("% of the engine's total" if share else unit)
    ax.set_title(title, pad=14)
    ax.set_ylim(0, max(bottoms) * 1.08)


def write_png(doc: dict, path: Path) -> Path:
    """Energy share by module (left: each engine sums to 100 %, totals on top) and area by module
    (right, mm²), CAM engine vs baseline."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = (doc["target"], doc["baseline_hardware"]["name"])
    energy = tuple({k: v / 1e3 for k, v in d.items()} for d in (
        doc["totals"]["energy_breakdown_nj"], doc["baseline"]["energy_breakdown_nj"]))
    area = (_area_breakdown(doc["hardware"]), _area_breakdown(doc["baseline_hardware"]))
    modules = sorted({m for d in energy + area for m in d},
                     key=lambda m: -max(d.get(m, 0.0) / (sum(d.values()) or 1)
                                        for d in energy + area))
    cmap = plt.get_cmap("tab20")
    colors = {m: cmap(i % 20) for i, m in enumerate(modules)}
    fig, axes = plt.subplots(1, 2, figsize=(13, 6))
    _stacked(axes[0], names, energy, colors, True, "µJ", "energy by module")
    _stacked(axes[1], names, area, colors, False, "mm²", "area by module")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.suptitle(f"{doc.get('model') or 'attention'} on {doc['target']}: "
                 f"area −{doc['area_reduction']:.0%}, power −{doc['power_reduction']:.0%}, "
                 f"energy −{doc.get('energy_reduction', 0):.0%} "
                 "(HAD: area −79 %, power −87 %)")
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)
