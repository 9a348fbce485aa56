"""Data model of the simulated accelerators: a HAD/CAMformer-style CAM attention engine and a
standard (bf16 MAC array) attention engine used as the baseline.

A ``Block`` is one kind of hardware module with its active power per instance (mW), area per
instance (µm²) and latency (cycles); an accelerator is a set of blocks plus the architectural
parameters (tile geometry, ADC bits, top-k stages, MACs, SRAM sizes, DRAM). Energy of one use of
a block is ``power × delay × instances / clock`` (mW × ns = pJ), the accounting CAMformer uses.

What it does: hold and validate configurations (``validate`` raises ``HardwareConfigError`` with a
message naming the bad field) and turn them into/from plain dicts for the JSON descriptor.
What it does not: cost anything (``cost_model``), know presets (``presets``) or scale nodes
(``scaling``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError


class HardwareConfigError(UserError):
    """A hardware configuration that cannot exist (zero tiles, ADC too narrow, ...)."""


@dataclass(frozen=True)
class Block:
    """One hardware module: active power (mW) and area (µm²) per instance, latency in cycles."""

    power_mw: float
    area_um2: float
    delay_cycles: int
    source: str = ""

    def use_energy_pj(self, clock_ghz: float, instances: int = 1, uses: float = 1.0) -> float:
        """Energy of ``uses`` activations of ``instances`` parallel copies (mW·ns = pJ)."""
        return self.power_mw * self.delay_cycles * instances * uses / clock_ghz

    def scaled(self, area: float, energy: float) -> "Block":
        """The same block in another node: area × ``area``, power × ``energy`` (same clock)."""
        return dataclasses.replace(self, power_mw=self.power_mw * energy,
                                   area_um2=self.area_um2 * area)


# Block names every CAM accelerator has, in datapath order (the report plots them in this order).
CAM_BLOCKS = ("query_buffer", "key_sram", "cam_array", "adc", "scaler", "tile_topk",
              "ptop_reg", "topk_unit", "softmax_lut", "softmax_div", "softmax_acc",
              "output_buffer", "value_sram", "mac")
# Blocks of the standard-attention baseline.
BASELINE_BLOCKS = ("query_buffer", "key_sram", "mac", "softmax_lut", "softmax_div",
                   "softmax_acc", "output_buffer", "value_sram")


@dataclass(frozen=True)
class Memory:
    """On-chip SRAM sizes and the off-chip DRAM both accelerators share."""

    key_sram_kib: float
    value_sram_kib: float
    sram_access_bytes: int            # width of one SRAM access (CAMformer: 4 × 64 b = 32 B)
    dram_bandwidth_gb_s: float
    dram_energy_pj_per_byte: float
    dram_latency_cycles: int
    query_buffer_bytes: int = 512     # query buffer (SRAM/registers) size

    def validate(self) -> None:
        _positive(self, ("key_sram_kib", "value_sram_kib", "sram_access_bytes",
                         "dram_bandwidth_gb_s", "dram_energy_pj_per_byte", "query_buffer_bytes"))
        if self.dram_latency_cycles < 0:
            raise HardwareConfigError("memory.dram_latency_cycles must be >= 0")

    def dram_bytes_per_cycle(self, clock_ghz: float) -> float:
        return self.dram_bandwidth_gb_s / clock_ghz


@dataclass(frozen=True)
class CamAccelerator:
    """A CAM attention engine: binary keys in capacitive CAM tiles searched by binary queries
    (XNOR match-line sums = Hamming similarity), ADCs, a two-stage top-k (per tile, then a
    merge unit), a LUT softmax and a few MACs for P·V over the selected values."""

    name: str
    tech_nm: int
    clock_ghz: float
    cam_rows: int                 # keys per CAM tile
    cam_cols: int                 # bits per key held by a tile (head-dim chunk)
    cam_tiles: int                # physical tiles searched in parallel
    rows_per_program: int         # key rows written into a tile per cycle
    adc_bits: int                 # one ADC per tile row digitises a match-line sum
    tile_keep: int                # top-k stage 1: candidates kept per tile (Top-2 unit 16→4)
    topk_inputs: int              # top-k stage 2: merge unit inputs (= candidate register size)
    topk_outputs: int             # top-k stage 2: outputs (the largest top-k it supports)
    softmax_lut_entries: int      # exp LUT indexed by the integer score
    softmax_parallel: int         # softmax entries per cycle
    mac_count: int                # MACs for P·V
    mac_precision: str            # "bf16"
    value_bytes: int              # bytes per value element
    memory: Memory
    blocks: dict[str, Block] = field(default_factory=dict)
    kind: str = "cam"

    def instances(self, block: str) -> int:
        """How many copies of ``block`` the chip holds."""
        per_tile = {"cam_array": 1, "adc": self.cam_rows, "scaler": self.cam_rows,
                    "tile_topk": 1}
        if block in per_tile:
            return per_tile[block] * self.cam_tiles
        return self.mac_count if block == "mac" else 1

    def validate(self) -> "CamAccelerator":
        _positive(self, ("clock_ghz", "cam_rows", "cam_cols", "cam_tiles", "rows_per_program",
                         "adc_bits", "tile_keep", "topk_inputs", "topk_outputs",
                         "softmax_lut_entries", "softmax_parallel", "mac_count", "value_bytes",
                         "tech_nm"))
        if 2 ** self.adc_bits < self.cam_cols:
            raise HardwareConfigError(
                f"adc_bits={self.adc_bits} cannot resolve a {self.cam_cols}-column match line "
                f"(needs >= {math.ceil(math.log2(self.cam_cols))} bits)")
        if self.tile_keep > self.cam_rows:
            raise HardwareConfigError(
                f"tile_keep={self.tile_keep} exceeds cam_rows={self.cam_rows}")
        if self.topk_outputs >= self.topk_inputs:
            raise HardwareConfigError(
                f"topk_outputs={self.topk_outputs} must be < topk_inputs={self.topk_inputs} "
                "(the merge unit needs room for new candidates)")
        if self.tile_keep > self.topk_inputs - self.topk_outputs:
            raise HardwareConfigError(
                f"tile_keep={self.tile_keep} exceeds the free candidate slots "
                f"({self.topk_inputs} - {self.topk_outputs})")
        if self.mac_precision != "bf16":
            raise HardwareConfigError(
                f"mac_precision {self.mac_precision!r}: only 'bf16' is modelled")
        self.memory.validate()
        _check_blocks(self.name, self.blocks, CAM_BLOCKS)
        return self

    @property
    def area_um2(self) -> float:
        return sum(self.block_area_um2(name) for name in CAM_BLOCKS)

    def block_area_um2(self, name: str) -> float:
        return self.blocks[name].area_um2 * self.instances(name)


@dataclass(frozen=True)
class BaselineAccelerator:
    """A standard attention engine: bf16 MAC array for QKᵀ and P·V, exp (LUT) units, the same
    SRAM macros and DRAM as the CAM engine it is compared with."""

    name: str
    tech_nm: int
    clock_ghz: float
    mac_count: int
    exp_units: int
    div_units: int
    key_bytes: int                # bytes per key element (bf16 = 2)
    query_bytes: int
    value_bytes: int
    memory: Memory
    blocks: dict[str, Block] = field(default_factory=dict)
    kind: str = "baseline"

    def instances(self, block: str) -> int:
        return {"mac": self.mac_count, "softmax_lut": self.exp_units, "softmax_div": self.div_units,
                "softmax_acc": self.exp_units}.get(block, 1)

    def validate(self) -> "BaselineAccelerator":
        _positive(self, ("clock_ghz", "mac_count", "exp_units", "div_units", "key_bytes",
                         "query_bytes", "value_bytes", "tech_nm"))
        self.memory.validate()
        _check_blocks(self.name, self.blocks, BASELINE_BLOCKS)
        return self

    @property
    def area_um2(self) -> float:
        return sum(self.block_area_um2(name) for name in BASELINE_BLOCKS)

    def block_area_um2(self, name: str) -> float:
        return self.blocks[name].area_um2 * self.instances(name)


Accelerator = CamAccelerator | BaselineAccelerator


def _positive(obj: Any, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise HardwareConfigError(f"{type(obj).__name__}.{name} must be > 0, got {value!r}")


def _check_blocks(name: str, blocks: dict[str, Block], required: tuple[str, ...]) -> None:
    missing = [b for b in required if b not in blocks]
    if missing:
        raise HardwareConfigError(f"{name}: missing hardware blocks {missing}")
    for key, block in blocks.items():
        if block.power_mw < 0 or block.area_um2 < 0 or block.delay_cycles < 1:
            raise HardwareConfigError(
                f"{name}: block {key!r} needs power >= 0, area >= 0 and delay >= 1 cycle")


def to_dict(acc: Accelerator) -> dict[str, Any]:
    """Plain-JSON form (blocks as a dict of dicts, plus the derived area)."""
    out = dataclasses.asdict(acc)
    out["area_mm2"] = acc.area_um2 / 1e6
    return out


def from_dict(data: dict[str, Any]) -> Accelerator:
    """Inverse of :func:`to_dict` (the derived area is ignored); validates the result."""
    data = {k: v for k, v in data.items() if k != "area_mm2"}
    cls = CamAccelerator if data.get("kind", "cam") == "cam" else BaselineAccelerator
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - fields
    if unknown:
        raise HardwareConfigError(f"unknown hardware fields {sorted(unknown)}")
    data = dict(data, memory=Memory(**data["memory"]),
                blocks={k: Block(**v) for k, v in data.get("blocks", {}).items()})
    try:
        return cls(**data).validate()
    except TypeError as err:
        raise HardwareConfigError(f"bad hardware description: {err}") from None
