"""Named hardware presets: the HAD-style CAM accelerator and its standard-attention baseline at
45 nm (calibrated), 28 nm and 7 nm (scaled, see ``scaling``).

``had-cam-45nm`` takes every block from the CAMformer module table (arXiv 2511.19740, 45 nm-
normalised: DC synthesis at 65 nm scaled ×0.66 area, ×0.52 power; 1 GHz; 16×64 BA-CAM, 6-bit
ADCs, 8 bf16 MACs; its public simulator ``tmo324/CAMformerV1``). CAMformer is the only public
cost model of such hardware (HAD publishes none), so it is the calibration point, labelled as
such. Values not in that table (SRAM capacities, DRAM bandwidth) are our choices, stated here.

``std-attn-<node>`` is the baseline: the same SRAM macros, buffers and DRAM, CAMformer's bf16
MAC and LUT blocks, sized as a 256-MAC (16×16) array with 16 exp (LUT) units and 16 dividers.

What it does not: cost anything; read user files (``--hardware FILE`` goes through
``descriptor.load_hardware``).
"""
from __future__ import annotations

import dataclasses

from .hardware import (Accelerator, BaselineAccelerator, Block, CamAccelerator,
                       HardwareConfigError, Memory)
from .scaling import scale_to_node

_CAMFORMER = "CAMformer module table (arXiv 2511.19740), 45 nm-normalised"

# CAMformer: per-block active power (mW), area (µm², one instance) and latency (cycles).
CAMFORMER_BLOCKS = {
    "query_buffer": Block(0.803, 2475.0, 1, _CAMFORMER),
    "key_sram": Block(28.4, 27728.6, 1, _CAMFORMER),
    "cam_array": Block(13.148, 2230.3, 1, _CAMFORMER + " (BA-CAM 16x64; programming = search)"),
    "adc": Block(0.95, 4000.0, 2, _CAMFORMER + " (6-bit SAR ADC, one per row)"),
    "scaler": Block(0.0245, 83.6, 2, _CAMFORMER + " (fixed shift/scale, one per row)"),
    "tile_topk": Block(6.084, 8801.3, 2, _CAMFORMER + " (Top-2 unit, 16->4)"),
    "ptop_reg": Block(1.529, 6042.3, 1, _CAMFORMER + " (candidate register, 64 entries)"),
    "topk_unit": Block(52.08, 67016.9, 6, _CAMFORMER + " (Top-32 unit, 64->32)"),
    "softmax_lut": Block(1.418, 1612.4, 1, _CAMFORMER),
    "softmax_div": Block(0.0711, 441.5, 3, _CAMFORMER),
    "softmax_acc": Block(1.117, 2879.6, 1, _CAMFORMER),
    "output_buffer": Block(1.555, 5990.8, 1, _CAMFORMER),
    "value_sram": Block(34.7, 44820.0, 1, _CAMFORMER),
    "mac": Block(1.117, 2879.6, 4, _CAMFORMER + " (bf16 MAC)"),
}

# CAMformer's DRAM row: 12.43 mW for 24 cycles per value prefetch of one key tile's 4 candidates
# (4 × 64 bf16 = 512 B) → 0.583 pJ/B. That is far below HBM2's ~3.9 pJ/bit (O'Connor et al.,
# MICRO 2017): set dram_energy_pj_per_byte in a --hardware file to cost real DRAM.
CAMFORMER_DRAM_PJ_PER_BYTE = 12.43 * 24 / 512

MEMORY_45NM = Memory(
    key_sram_kib=8.0,            # 1024 keys × 64 bits: one head at the calibration shape
    value_sram_kib=16.0,
    sram_access_bytes=32,        # CAMformer: 4 × 64-bit rows per key-SRAM access
    dram_bandwidth_gb_s=128.0,   # ours: enough to hide the per-tile value prefetch (as CAMformer)
    dram_energy_pj_per_byte=CAMFORMER_DRAM_PJ_PER_BYTE,
    dram_latency_cycles=24,
    query_buffer_bytes=512,      # a bf16 query up to d=256 (binary: 16 queries of d=256)
)

HAD_CAM_45NM = CamAccelerator(
    name="had-cam-45nm", tech_nm=45, clock_ghz=1.0,
    cam_rows=16, cam_cols=64, cam_tiles=1, rows_per_program=4, adc_bits=6,
    tile_keep=4, topk_inputs=64, topk_outputs=32,
    softmax_lut_entries=129, softmax_parallel=1,     # one entry per integer score in [-64, 64]
    mac_count=8, mac_precision="bf16", value_bytes=2,
    memory=MEMORY_45NM, blocks=dict(CAMFORMER_BLOCKS),
)

_BASELINE_SOURCE = "baseline: CAMformer's block, reused"
STD_ATTN_45NM = BaselineAccelerator(
    name="std-attn-45nm", tech_nm=45, clock_ghz=1.0,
    mac_count=256, exp_units=16, div_units=16, key_bytes=2, query_bytes=2, value_bytes=2,
    memory=MEMORY_45NM,
    blocks={
        # a bf16 query is 16× the bits of a binary one: 16× the query-buffer area and energy
        "query_buffer": Block(0.803 * 16, 2475.0 * 16, 1, _BASELINE_SOURCE + " ×16 (bf16 query)"),
        "key_sram": CAMFORMER_BLOCKS["key_sram"],
        "mac": CAMFORMER_BLOCKS["mac"],
        "softmax_lut": Block(1.418, 1612.4, 1, _BASELINE_SOURCE + " (exp LUT)"),
        "softmax_div": CAMFORMER_BLOCKS["softmax_div"],
        "softmax_acc": CAMFORMER_BLOCKS["softmax_acc"],
        "output_buffer": CAMFORMER_BLOCKS["output_buffer"],
        "value_sram": CAMFORMER_BLOCKS["value_sram"],
    },
)

NODES = (45, 28, 7)


def _build() -> dict[str, Accelerator]:
    presets: dict[str, Accelerator] = {}
    for base in (HAD_CAM_45NM.validate(), STD_ATTN_45NM.validate()):
        stem = base.name.rsplit("-", 1)[0]
        for nm in NODES:
            name = f"{stem}-{nm}nm"
            presets[name] = base if nm == 45 else scale_to_node(base, nm, name)
    return presets


PRESETS: dict[str, Accelerator] = _build()
TARGETS = tuple(n for n in PRESETS if n.startswith("had-cam"))


def get_preset(name: str) -> Accelerator:
    """The preset called ``name``; unknown names raise with the list of known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise HardwareConfigError(
            f"unknown target {name!r}; known: {', '.join(sorted(PRESETS))}") from None


def baseline_for(target: CamAccelerator) -> BaselineAccelerator:
    """The standard-attention baseline at the target's node, with the target's memory system."""
    name = f"std-attn-{target.tech_nm}nm"
    base = PRESETS.get(name)
    if not isinstance(base, BaselineAccelerator):
        base = scale_to_node(STD_ATTN_45NM, target.tech_nm, name)
    return dataclasses.replace(base, memory=target.memory, clock_ghz=target.clock_ghz).validate()
