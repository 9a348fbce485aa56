"""Technology-node scaling of the accelerator blocks (45 nm → 28 nm → 7 nm).

The rule (first order, written down so it can be argued with):

* **Area** of every on-chip block scales with the published high-density 6T SRAM bit-cell area
  of the node, a measured density figure rather than the ideal (L'/L)² (which is ~3× too
  optimistic at 7 nm):
  45 nm 0.346 µm² (Intel, Mistry et al., IEDM 2007), 28 nm 0.127 µm² (TSMC 28 nm high-k
  metal-gate HD cell, 2009), 7 nm 0.027 µm² (TSMC N7, Wu et al., IEDM 2016).
* **Dynamic energy per operation** scales as C·V² (Dennard et al., IEEE JSSC 1974): switched
  capacitance with the linear dimension (√ of the area factor) and V with the nominal supply:
  45 nm 1.0 V (PTM 45 nm HP), 28 nm 0.9 V, 7 nm 0.7 V (ASAP7 PDK nominal, Clark et al.,
  Microelectronics J. 2016).  At the same clock, power scales by the same factor.
* The **clock stays at 1 GHz** (CAMformer's) — faster nodes could clock higher; we do not claim
  it.
* **DRAM** energy per byte and bandwidth are off-chip and do **not** scale.

Cross-check: Stillmaker & Baas, "Scaling equations for the accurate prediction of CMOS device
performance from 180 nm to 7 nm", Integration 58 (2017) 74–81, fit HSPICE/PTM data and report
that classical (ideal) rules can be off by up to 83×; this rule is coarser than their
table-based polynomials (expect ±30 % at 7 nm) and is meant for relative comparisons.

What it does not: leakage, wire-dominated delay, analog (ADC/CAM) scaling that differs from
logic — all blocks share one factor.
"""
from __future__ import annotations

import dataclasses
import math

from .hardware import Accelerator, HardwareConfigError

REFERENCE_NM = 45
SRAM_CELL_UM2 = {45: 0.346, 28: 0.127, 7: 0.027}
SUPPLY_V = {45: 1.0, 28: 0.9, 7: 0.7}
CITATIONS = [
    "K. Mistry et al., 'A 45nm logic technology with high-k+metal gate transistors...', IEDM 2007 "
    "(0.346 um^2 SRAM cell)",
    "TSMC 28nm high-k metal-gate platform, 0.127 um^2 high-density 6T SRAM cell (TSMC, 2009)",
    "S.-Y. Wu et al., 'A 7nm CMOS platform technology featuring 4th generation FinFET "
    "transistors with a 0.027um^2 high density 6-T SRAM cell', IEDM 2016",
    "R. Dennard et al., 'Design of ion-implanted MOSFETs with very small physical dimensions', "
    "IEEE JSSC 9(5), 1974 (energy ~ C V^2)",
    "L. T. Clark et al., 'ASAP7: A 7-nm finFET predictive process design kit', "
    "Microelectronics Journal 53, 2016 (0.7 V nominal)",
    "A. Stillmaker, B. Baas, 'Scaling equations for the accurate prediction of CMOS device "
    "performance from 180 nm to 7 nm', Integration 58 (2017) 74-81 (cross-check)",
]
RULE = ("area x (SRAM cell area ratio); energy and power x sqrt(area ratio) x (V/V45)^2; "
        "clock fixed at 1 GHz; DRAM not scaled")


def node_factors(nm: int) -> dict[str, float]:
    """``{"area": a, "energy": e}`` multiplying 45 nm values to get ``nm`` values."""
    if nm not in SRAM_CELL_UM2:
        raise HardwareConfigError(
            f"no scaling data for {nm} nm (known nodes: {sorted(SRAM_CELL_UM2)})")
    area = SRAM_CELL_UM2[nm] / SRAM_CELL_UM2[REFERENCE_NM]
    energy = math.sqrt(area) * (SUPPLY_V[nm] / SUPPLY_V[REFERENCE_NM]) ** 2
    return {"area": area, "energy": energy}


def scale_to_node(acc: Accelerator, nm: int, name: str) -> Accelerator:
    """A copy of a 45 nm accelerator at ``nm`` (blocks scaled; memory/DRAM unchanged)."""
    if acc.tech_nm != REFERENCE_NM:
        raise HardwareConfigError(f"scaling starts from {REFERENCE_NM} nm, got {acc.tech_nm} nm")
    f = node_factors(nm)
    blocks = {k: b.scaled(f["area"], f["energy"]) for k, b in acc.blocks.items()}
    return dataclasses.replace(acc, name=name, tech_nm=nm, blocks=blocks).validate()


def describe() -> dict:
    """The rule, the per-node factors and the citations (goes into every descriptor)."""
    return {"rule": RULE, "reference_nm": REFERENCE_NM,
            "factors": {str(nm): node_factors(nm) for nm in sorted(SRAM_CELL_UM2, reverse=True)},
            "citations": CITATIONS}
