"""Analytical cost model: cycles, energy (per block) and area of binary attention on the CAM
accelerator and of standard attention on the baseline.

Unit of work: **one query row of one head** (what CAMformer reports: 721 cycles, 54.9 nJ at
N=1024, d=64, top-k 32). A layer costs ``B·Hq·Nq`` query rows on one engine plus the one-off
DRAM traffic of loading each head's keys and writing the outputs.

CAM engine, per query (CAMformer's "realistic" pipeline):
* association — for each 16-key tile: program the tile (``rows/rows_per_program`` cycles, keys
  read from the key SRAM, or from DRAM when a head's binary keys do not fit), one search cycle,
  ADC + scaler per row, then the per-tile top-k stage keeps ``tile_keep`` candidates in the
  candidate register and their values are prefetched from DRAM. Program + search are
  serial; the rest is pipelined (drain added once). When the register is full the merge unit
  cuts it back to top-k (``ceil((candidates − capacity)/(capacity − k))`` merges; CAMformer's
  notebook counts 2 at the calibration shape, this rule counts 6: +1.25 nJ, 2 %). Head dims above
  ``cam_cols`` take several column passes; ``cam_tiles`` physical tiles work in parallel.
* normalization — final top-k, then LUT exp + accumulate (1 cycle/entry) and divide (3
  cycles/entry), not pipelined.
* contextualization — ``k·Dv / mac_count`` pipelined MAC cycles over the selected values.
Without top-k (a site with no ``top_n``) every key is kept: scores go straight to the output
buffer, every value is prefetched, softmax and P·V run over all N keys.

Baseline, per query: QKᵀ and P·V on the MAC array, exp (LUT) + divide units over all N scores,
keys/values from the same SRAMs (or streamed from DRAM when they do not fit); cycles are the
larger of compute and DRAM transfer time.

Bit widths: Q and K are 1 bit (binary keys in the CAM, 1-bit query buffer); a site with
``pv_bits=8`` moves int8 values (half the prefetch bytes and value-SRAM reads) through the same
bf16 MACs (int8 is exact in bf16), on both engines.

Energy of a block use = power × delay × instances / clock (CAMformer's accounting); DRAM energy
= bytes × pJ/B. What it does not: leakage, control, interconnect, multi-engine scheduling.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

from .hardware import BaselineAccelerator, CamAccelerator, HardwareConfigError


@dataclass(frozen=True)
class AttentionShape:
    """One attention site: batch, query/key-value heads, query/key lengths, head dims, top-k."""

    batch: int
    q_heads: int
    kv_heads: int
    q_len: int
    k_len: int
    head_dim: int
    v_dim: int
    top_k: Optional[int] = None
    pv_bits: Optional[int] = None     # 8: int8 V (1 byte/element) and u8 P; None: bf16

    @property
    def v_bytes(self) -> int:
        """Bytes per value element moved through SRAM/DRAM."""
        return 1 if self.pv_bits == 8 else 2

    @classmethod
    def square(cls, seq: int, head_dim: int, heads: int,
               top_k: Optional[int] = None) -> "AttentionShape":
        """Self-attention of one sequence (the ``--attention SEQ,D,HEADS[,TOPK]`` form)."""
        return cls(1, heads, heads, seq, seq, head_dim, head_dim, top_k).validate()

    def validate(self) -> "AttentionShape":
        for name in ("batch", "q_heads", "kv_heads", "q_len", "k_len", "head_dim", "v_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise HardwareConfigError(
                    f"attention {name} must be a positive integer, got {value!r}")
        if self.q_heads % self.kv_heads:
            raise HardwareConfigError(
                f"q_heads={self.q_heads} is not a multiple of kv_heads={self.kv_heads}")
        if self.pv_bits not in (None, 8):
            raise HardwareConfigError(f"pv_bits must be None or 8, got {self.pv_bits!r}")
        if self.top_k is not None:
            if self.top_k < 1:
                raise HardwareConfigError(f"top-k must be >= 1, got {self.top_k}")
            if self.top_k > self.k_len:
                raise HardwareConfigError(
                    f"top-k {self.top_k} is larger than the number of keys N={self.k_len}")
        return self

    @property
    def queries(self) -> int:
        """Query rows the engine processes: B·Hq·Nq."""
        return self.batch * self.q_heads * self.q_len


@dataclass
class Cost:
    """Cycles (total and per phase), energy per block in pJ (``dram`` included) and DRAM bytes."""

    cycles: float = 0.0
    phase_cycles: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    energy_pj: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    dram_bytes: float = 0.0

    @property
    def energy_nj(self) -> float:
        return sum(self.energy_pj.values()) / 1e3

    def times(self, n: float) -> "Cost":
        out = Cost(self.cycles * n, dram_bytes=self.dram_bytes * n)
        for k, v in self.phase_cycles.items():
            out.phase_cycles[k] = v * n
        for k, v in self.energy_pj.items():
            out.energy_pj[k] = v * n
        return out

    def add(self, other: "Cost") -> "Cost":
        self.cycles += other.cycles
        self.dram_bytes += other.dram_bytes
        for k, v in other.phase_cycles.items():
            self.phase_cycles[k] += v
        for k, v in other.energy_pj.items():
            self.energy_pj[k] += v
        return self

    def power_mw(self, clock_ghz: float) -> float:
        """Average power over the run: energy / time (pJ/ns = mW)."""
        return sum(self.energy_pj.values()) / (self.cycles / clock_ghz) if self.cycles else 0.0


class _Ledger:
    """Accumulates block uses for one accelerator."""

    def __init__(self, hw):
        self.hw, self.cost = hw, Cost()

    def use(self, block: str, uses: float = 1.0, instances: int = 1) -> None:
        self.cost.energy_pj[block] += self.hw.blocks[block].use_energy_pj(
            self.hw.clock_ghz, instances, uses)

    def dram(self, nbytes: float) -> None:
        self.cost.dram_bytes += nbytes
        self.cost.energy_pj["dram"] += nbytes * self.hw.memory.dram_energy_pj_per_byte

    def phase(self, name: str, cycles: float) -> None:
        self.cost.phase_cycles[name] += cycles
        self.cost.cycles += cycles

    def delay(self, block: str) -> int:
        return self.hw.blocks[block].delay_cycles


def _tile_sizes(n_keys: int, rows: int) -> list[int]:
    full, rest = divmod(n_keys, rows)
    return [rows] * full + ([rest] if rest else [])


def cam_mapping(hw: CamAccelerator, shape: AttentionShape) -> dict:
    """How one query row maps onto the CAM: key tiles, column passes, waves, top-k mode."""
    top_k = effective_top_k(hw, shape)
    return {"key_tiles": math.ceil(shape.k_len / hw.cam_rows),
            "column_passes": math.ceil(shape.head_dim / hw.cam_cols),
            "physical_tiles": hw.cam_tiles,
            "waves": math.ceil(math.ceil(shape.k_len / hw.cam_rows) / hw.cam_tiles),
            "keys_fit_in_sram": _binary_key_bytes(shape) <= hw.memory.key_sram_kib * 1024,
            # the exp LUT is indexed by the integer score in [-D, D]: 2D + 1 entries
            "softmax_lut_covers_scores": hw.softmax_lut_entries >= 2 * shape.head_dim + 1,
            "top_k": top_k, "mode": "top-k" if top_k is not None else "dense"}


def effective_top_k(hw: CamAccelerator, shape: AttentionShape) -> Optional[int]:
    """The top-k the engine runs (None = dense); raises if the merge unit cannot produce it."""
    if shape.top_k is None or shape.top_k >= shape.k_len:
        return None
    if shape.top_k > hw.topk_outputs:
        raise HardwareConfigError(
            f"top-k {shape.top_k} exceeds what {hw.name}'s top-k unit outputs "
            f"({hw.topk_outputs}); lower top_n or raise topk_outputs")
    return shape.top_k


def _binary_key_bytes(shape: AttentionShape) -> float:
    return shape.k_len * shape.head_dim / 8


def _check_query_fits(hw, shape: AttentionShape, bits: int) -> None:
    need = math.ceil(shape.head_dim * bits / 8)
    if need > hw.memory.query_buffer_bytes:
        raise HardwareConfigError(
            f"{hw.name}: a {bits}-bit query of D={shape.head_dim} needs {need} B, the query "
            f"buffer holds {hw.memory.query_buffer_bytes} B (raise memory.query_buffer_bytes)")


def cam_query_cost(hw: CamAccelerator, shape: AttentionShape) -> Cost:
    """Cost of one query row of one head on the CAM engine."""
    _check_query_fits(hw, shape, 1)
    m = cam_mapping(hw, shape)
    led, passes, top_k = _Ledger(hw), m["column_passes"], m["top_k"]
    programs = math.ceil(hw.cam_rows / hw.rows_per_program) * passes
    tiles = _tile_sizes(shape.k_len, hw.cam_rows)
    led.use("query_buffer")                                   # load the query
    prefetch = 0.0
    for keys in tiles:
        led.use("key_sram", programs)
        if not m["keys_fit_in_sram"]:
            led.dram(keys * shape.head_dim / 8)
        led.use("cam_array", programs + passes)               # program, then search
        led.use("query_buffer", passes)
        led.use("adc", passes, hw.cam_rows)
        led.use("scaler", passes, hw.cam_rows)
        kept = min(hw.tile_keep, keys) if top_k is not None else keys
        if top_k is not None:
            led.use("tile_topk")
            led.use("ptop_reg")
        else:
            led.use("output_buffer")
        prefetch += kept * shape.v_dim * min(shape.v_bytes, hw.value_bytes)
        led.use("value_sram", kept / hw.tile_keep)           # one write per prefetch burst
    led.dram(prefetch)
    drain = led.delay("adc") + led.delay("scaler") + (
        led.delay("tile_topk") + led.delay("ptop_reg") if top_k is not None
        else led.delay("output_buffer"))
    compute = m["waves"] * (programs + passes) + drain
    transfer = led.cost.dram_bytes / hw.memory.dram_bytes_per_cycle(hw.clock_ghz)
    led.phase("association", max(compute, transfer))
    if top_k is not None:
        candidates = sum(min(hw.tile_keep, keys) for keys in tiles)
        free = hw.topk_inputs - top_k
        merges = max(0, math.ceil((candidates - hw.topk_inputs) / free))
        led.use("topk_unit", merges + 1)                       # merges hide under association
        led.use("ptop_reg", merges)
    kept = top_k if top_k is not None else shape.k_len
    _softmax(led, kept, hw.softmax_parallel, 1, top_k is not None)
    iterations = math.ceil(kept * shape.v_dim / hw.mac_count)
    # int8 V runs on the bf16 MACs (exact), but each SRAM read brings twice the values
    led.use("value_sram", iterations * min(shape.v_bytes, hw.value_bytes) / hw.value_bytes)
    led.use("mac", iterations, hw.mac_count)
    led.phase("contextualization", iterations + led.delay("mac"))
    return led.cost


def _softmax(led: _Ledger, entries: int, exp_units: int, div_units: int, final_topk: bool) -> None:
    """LUT exp + accumulate, then divide, over ``entries`` scores (not pipelined)."""
    cycles = led.delay("topk_unit") if final_topk else 0
    led.use("softmax_lut", entries)
    led.use("softmax_acc", entries)
    led.use("output_buffer", entries)                          # write exp
    cycles += math.ceil(entries / exp_units) * led.delay("softmax_acc")
    led.use("softmax_div", entries)
    led.use("output_buffer", 2 * entries)                      # read, write normalised
    cycles += math.ceil(entries / div_units) * led.delay("softmax_div")
    led.phase("normalization", cycles)


def baseline_query_cost(hw: BaselineAccelerator, shape: AttentionShape) -> Cost:
    """Cost of one query row of one head of standard (dense, bf16) attention on the baseline."""
    _check_query_fits(hw, shape, 8 * hw.query_bytes)
    led = _Ledger(hw)
    access = hw.memory.sram_access_bytes
    key_bytes = shape.k_len * shape.head_dim * hw.key_bytes
    value_bytes = shape.k_len * shape.v_dim * min(shape.v_bytes, hw.value_bytes)
    led.use("query_buffer")
    led.use("key_sram", math.ceil(key_bytes / access))
    if key_bytes > hw.memory.key_sram_kib * 1024:
        led.dram(key_bytes)
    qk = math.ceil(shape.k_len * shape.head_dim / hw.mac_count)
    led.use("mac", qk, hw.mac_count)
    led.phase("qk", qk + led.delay("mac"))
    _softmax(led, shape.k_len, hw.exp_units, hw.div_units, final_topk=False)
    led.use("value_sram", math.ceil(value_bytes / access))
    if value_bytes > hw.memory.value_sram_kib * 1024:
        led.dram(value_bytes)
    pv = math.ceil(shape.k_len * shape.v_dim / hw.mac_count)
    led.use("mac", pv, hw.mac_count)
    led.phase("pv", pv + led.delay("mac"))
    transfer = led.cost.dram_bytes / hw.memory.dram_bytes_per_cycle(hw.clock_ghz)
    if transfer > led.cost.cycles:
        led.phase("dram_stall", transfer - led.cost.cycles)
    return led.cost


def _io_cost(hw, shape: AttentionShape, key_bits: int, query_bits: int,
             keys_resident: bool) -> Cost:
    """One-off DRAM traffic of a layer: each head's keys (when resident), queries, outputs."""
    led = _Ledger(hw)
    heads = shape.batch * shape.kv_heads
    if keys_resident:
        led.dram(heads * shape.k_len * shape.head_dim * key_bits / 8)
    led.dram(shape.queries * shape.head_dim * query_bits / 8)
    led.dram(shape.queries * shape.v_dim * 2)                  # bf16 outputs
    led.phase("io", hw.memory.dram_latency_cycles
              + led.cost.dram_bytes / hw.memory.dram_bytes_per_cycle(hw.clock_ghz))
    return led.cost


def cam_layer_cost(hw: CamAccelerator, shape: AttentionShape) -> tuple[Cost, Cost]:
    """``(per_query, layer)`` cost of a site on the CAM engine."""
    per_query = cam_query_cost(hw, shape)
    resident = cam_mapping(hw, shape)["keys_fit_in_sram"]
    layer = per_query.times(shape.queries).add(_io_cost(hw, shape, 1, 1, resident))
    return per_query, layer


def baseline_layer_cost(hw: BaselineAccelerator, shape: AttentionShape) -> tuple[Cost, Cost]:
    """``(per_query, layer)`` cost of a site on the baseline."""
    per_query = baseline_query_cost(hw, shape)
    resident = shape.k_len * shape.head_dim * hw.key_bytes <= hw.memory.key_sram_kib * 1024
    bits = 8 * hw.key_bytes
    layer = per_query.times(shape.queries).add(
        _io_cost(hw, shape, bits, 8 * hw.query_bytes, resident))
    return per_query, layer
