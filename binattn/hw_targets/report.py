"""Human-readable views of a target descriptor: a rich comparison table, a per-site table and a
PNG with the energy and area breakdown by module (CAM engine vs baseline).

What it does not: cost anything (it reads the descriptor dict only), so a descriptor written
earlier, or by another tool that follows the schema, renders the same way.
"""
from __future__ import annotations

from pathlib import Path

from rich.table import Table

from .hardware import from_dict

def comparison_table(doc: dict) -> Table:
    """Totals of the CAM engine vs the baseline, our reductions beside HAD's."""
    ours, base = doc["totals"], doc["baseline"]
    had = doc.get("reference", {}).get("had", {})
    table = Table(title=f"{doc['target']} vs {doc['baseline_hardware']['name']}"
                        + (f" — {doc['model']}" if doc.get("model") else ""))
    for col in ("metric", doc["target"], doc["baseline_hardware"]["name"], "reduction", "HAD paper"):
        table.add_column(col, justify="right" if col != "metric" else "left")
    table.add_row("cycles", f"{ours['cycles']:,.0f}", f"{base['cycles']:,.0f}",
                  f"speed-up {doc.get('speedup', 0):.2f}×", "–")
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
        table.add_row("calib. area (mm²)", f"{mine['area_mm2']:.4f}", "", f"{err['area_mm2']:+.1%}",
                      f"CAMformer {ref['area_mm2']}")
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


def write_png(doc: dict, path: Path) -> Path:
    """Stacked bars: energy by module (left) and area by module (right), CAM vs baseline."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = (doc["target"], doc["baseline_hardware"]["name"])
    energy = (doc["totals"]["energy_breakdown_nj"], doc["baseline"]["energy_breakdown_nj"])
    area = (_area_breakdown(doc["hardware"]), _area_breakdown(doc["baseline_hardware"]))
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    for ax, data, unit, title in ((axes[0], energy, "µJ", "energy by module"),
                                  (axes[1], area, "mm²", "area by module")):
        modules = sorted({m for d in data for m in d}, key=lambda m: -max(d.get(m, 0) for d in data))
        cmap = plt.get_cmap("tab20")
        scale = 1e-3 if unit == "µJ" else 1.0
        bottoms = [0.0, 0.0]
        for i, module in enumerate(modules):
            values = [d.get(module, 0.0) * scale for d in data]
            ax.bar(names, values, bottom=bottoms, label=module, color=cmap(i % 20))
            bottoms = [b + v for b, v in zip(bottoms, values)]
        for x, total in enumerate(bottoms):
            ax.text(x, total, f"{total:,.3g} {unit}", ha="center", va="bottom")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.legend(fontsize=7, loc="upper left", ncol=2)
    fig.suptitle(f"{doc.get('model') or 'attention'} on {doc['target']}: "
                 f"area −{doc['area_reduction']:.0%}, power −{doc['power_reduction']:.0%} "
                 f"(HAD: −79 %, −87 %)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
