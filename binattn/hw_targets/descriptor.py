"""The ASIC target descriptor: a versioned JSON document holding the hardware configuration, the
per-site mapping and costs, the totals and the comparison with the standard-attention baseline.

``build_descriptor(target, sites)`` costs every site (``cost_model``) and assembles the document;
``write_descriptor`` validates it against ``target_descriptor.schema.json`` (shipped in the
package) and writes it atomically (nothing half-written at the path on error);
``read_descriptor`` validates on read. What it does not: print or plot (``report``).
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import jsonschema

from .._version import __version__
from .._files import write_text
from ..errors import UserError
from . import scaling
from .cost_model import (AttentionShape, Cost, baseline_layer_cost, cam_layer_cost, cam_mapping)
from .hardware import CamAccelerator, HardwareConfigError, from_dict, to_dict
from .presets import baseline_for, get_preset
from .sites import SiteSpec

SCHEMA_VERSION = "1.0"
SCHEMA_FILE = "target_descriptor.schema.json"

# What the papers report, shown beside ours.
CAMFORMER_REFERENCE = {"shape": {"seq": 1024, "head_dim": 64, "heads": 16, "top_k": 32},
                       "cycles": 721, "energy_nj": 54.9, "area_mm2": 0.258,
                       "source": "CAMformer (arXiv 2511.19740), per query row of one head, 45 nm"}
HAD_REFERENCE = {"area_reduction": 0.79, "power_reduction": 0.87,
                 "source": "HAD (arXiv 2502.01770) vs a standard-attention accelerator; "
                           "node, clock and array sizes not published"}


class DescriptorError(UserError):
    """A descriptor that does not match the schema (or is not JSON)."""


@lru_cache(maxsize=1)
def schema() -> dict:
    """The JSON schema of the descriptor (draft 2020-12)."""
    text = resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def validate(doc: dict) -> dict:
    """Raise ``DescriptorError`` naming the first schema violation; return ``doc``."""
    try:
        jsonschema.Draft202012Validator(schema()).validate(doc)
    except jsonschema.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "<root>"
        raise DescriptorError(f"target descriptor invalid at {where}: {err.message}") from None
    return doc


def resolve_target(name: Optional[str], hardware_file: Optional[Path] = None) -> CamAccelerator:
    """A preset by name, or a hardware JSON (a descriptor's ``hardware`` block or a bare one)."""
    if hardware_file is None:
        target = get_preset(name or "had-cam-45nm")
    else:
        try:
            data = json.loads(Path(hardware_file).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise UserError(f"cannot read hardware file {hardware_file}: {err}") from None
        target = from_dict(data.get("hardware", data))
    if not isinstance(target, CamAccelerator):
        raise HardwareConfigError(f"{target.name} is a baseline, not a CAM target")
    return target.validate()


def _cost_block(cost: Cost, clock_ghz: float, area_mm2: float) -> dict[str, Any]:
    return {"cycles": round(cost.cycles, 3), "energy_nj": round(cost.energy_nj, 6),
            "area_mm2": round(area_mm2, 6), "latency_us": round(cost.cycles / clock_ghz / 1e3, 6),
            "power_mw": round(cost.power_mw(clock_ghz), 4),
            "dram_bytes": round(cost.dram_bytes, 1),
            "phase_cycles": {k: round(v, 3) for k, v in cost.phase_cycles.items()},
            "energy_breakdown_nj": {k: round(v / 1e3, 6) for k, v in cost.energy_pj.items()}}


def _shape_dict(shape: AttentionShape) -> dict[str, int]:
    return {"B": shape.batch, "Hq": shape.q_heads, "Hkv": shape.kv_heads, "Nq": shape.q_len,
            "Nk": shape.k_len, "D": shape.head_dim, "Dv": shape.v_dim}


def _site_entry(target, baseline, spec: SiteSpec) -> tuple[dict, Cost, Cost]:
    per_query, layer = cam_layer_cost(target, spec.shape)
    b_query, b_layer = baseline_layer_cost(baseline, spec.shape)
    clock = target.clock_ghz
    entry = {
        "index": spec.index, "layer": spec.layer, "matcher": spec.matcher,
        "shape": _shape_dict(spec.shape), "queries": spec.shape.queries,
        "top_n": spec.shape.top_k,
        "bits": {"q": 1, "k": 1, "p": spec.shape.pv_bits or 16, "v": spec.shape.pv_bits or 16,
                 "mac": target.mac_precision},
        "mapping": cam_mapping(target, spec.shape),
        "per_query": {"cycles": per_query.cycles, "energy_nj": round(per_query.energy_nj, 6),
                      "phase_cycles": dict(per_query.phase_cycles)},
        "cycles": round(layer.cycles, 3), "energy_nj": round(layer.energy_nj, 6),
        "power_mw": round(layer.power_mw(clock), 4),
        "energy_breakdown_nj": {k: round(v / 1e3, 6) for k, v in layer.energy_pj.items()},
        "baseline": {"cycles": round(b_layer.cycles, 3), "energy_nj": round(b_layer.energy_nj, 6),
                     "power_mw": round(b_layer.power_mw(clock), 4),
                     "per_query": {"cycles": b_query.cycles,
                                   "energy_nj": round(b_query.energy_nj, 6)}},
    }
    return entry, layer, b_layer


def _calibration(target: CamAccelerator) -> dict[str, Any]:
    """Our per-query cost at CAMformer's shape vs CAMformer's numbers (45 nm presets only)."""
    ref = CAMFORMER_REFERENCE
    s = ref["shape"]
    per_query, _ = cam_layer_cost(target, AttentionShape.square(s["seq"], s["head_dim"],
                                                                s["heads"], s["top_k"]))
    ours = {"cycles": per_query.cycles, "energy_nj": round(per_query.energy_nj, 4),
            "area_mm2": round(target.area_um2 / 1e6, 6)}
    return {"reference": ref, "ours": ours,
            "relative_error": {k: round(ours[k] / ref[k] - 1, 5) for k in ours}}


def build_descriptor(target: CamAccelerator, sites: list[SiteSpec],
                     model: str = "", extra: Optional[dict] = None) -> dict[str, Any]:
    """Cost every site on ``target`` and on its baseline; the full descriptor (validated)."""
    if not sites:
        raise UserError("no binarized attention sites to cost (did the pass rewrite anything?)")
    baseline = baseline_for(target)
    entries, total, b_total = [], Cost(), Cost()
    for spec in sites:
        entry, layer, b_layer = _site_entry(target, baseline, spec)
        entries.append(entry)
        total.add(layer)
        b_total.add(b_layer)
    ours = _cost_block(total, target.clock_ghz, target.area_um2 / 1e6)
    theirs = _cost_block(b_total, baseline.clock_ghz, baseline.area_um2 / 1e6)
    doc = {
        "schema_version": SCHEMA_VERSION,
        "generator": {"name": "binattn", "version": __version__},
        "target": target.name, "model": model,
        "hardware": to_dict(target),
        "baseline_hardware": to_dict(baseline),
        "sites": entries,
        "totals": ours, "baseline": theirs,
        "area_reduction": round(1 - ours["area_mm2"] / theirs["area_mm2"], 5),
        "power_reduction": round(1 - ours["power_mw"] / theirs["power_mw"], 5)
        if theirs["power_mw"] else 0.0,
        "energy_reduction": round(1 - ours["energy_nj"] / theirs["energy_nj"], 5)
        if theirs["energy_nj"] else 0.0,
        "speedup": round(theirs["cycles"] / ours["cycles"], 4) if ours["cycles"] else 0.0,
        # throughput per mm²: speed-up × area ratio (the baseline has more silicon)
        "iso_area_speedup": round(theirs["cycles"] * theirs["area_mm2"]
                                  / (ours["cycles"] * ours["area_mm2"]), 4)
        if ours["cycles"] and ours["area_mm2"] else 0.0,
        "reference": {"had": HAD_REFERENCE},
        "scaling": scaling.describe(),
    }
    if target.tech_nm == 45:
        doc["calibration"] = _calibration(target)
    if extra:
        doc.update(extra)
    return validate(doc)


def write_descriptor(doc: dict, path: Path) -> Path:
    """Validate, then write ``doc`` to ``path`` atomically (temp file + rename)."""
    validate(doc)
    write_text(path, json.dumps(doc, indent=2) + "\n")
    return Path(path)


def read_descriptor(path: Path) -> dict:
    """Load and validate a descriptor; clear errors for missing, non-JSON or invalid files."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DescriptorError(f"no such descriptor: {path}") from None
    except (OSError, json.JSONDecodeError) as err:
        raise DescriptorError(f"{path} is not a JSON descriptor: {err}") from None
    if not isinstance(doc, dict):
        raise DescriptorError(f"{path}: a descriptor is a JSON object")
    validate(doc)
    from_dict(doc["hardware"])                       # the hardware block must rebuild
    return doc
