"""Schedule knobs of binattn's CUDA attention kernel and the tuned-config database they come from.

What it does: names the knobs the TVMScript kernel in ``binattn.tvm_kernels.cuda.attention`` is
generated with (warps per CTA = 16 query rows each, keys per inner block, share of the
exponentials computed by a polynomial on the FMA pipe, pipeline stages), gives a default per
value head size, and reads/writes the tuning database (JSON: ``{arch: {"<dtype>/dv<N>":
{"warps": .., "key_block": ..}}}``) that ``binattn build-kernels`` consults and
``binattn tune --target cuda`` fills.

What it does not: build or time kernels (``binattn.tvm_kernels.cuda.build`` and
``benchmarks/gpu_attention.py`` do).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

#: value head sizes a kernel is built for; a head of size Dv runs the smallest one >= Dv
DV_BUCKETS = (32, 64, 72, 80, 96, 128, 256)
DTYPES = ("float16", "bfloat16")
PACKAGED_DB = Path(__file__).with_name("cuda_tuned.json")
#: float bits of 1.5·2**23: as_float(SCORE_MAGIC + i) == 1.5·2**23 + i for |i| < 2**22. The
#: attention kernel reads key popcounts as ``SCORE_MAGIC − popc`` (the sign-pack writes them so)
SCORE_MAGIC = 0x4B400000
#: sequences of at most this many keys run the "short" kernel (32-key blocks by default): on the
#: H100, dv 64: 17 % faster at 197 keys, 16 % at 257, 8 % at 577, 2 % at 1024, 3.5 % slower at
#: 4096 than the 64-key-block kernel; dv 128: 8 % / 2 % faster at 257 / 577, slower from 768;
#: dv 72 and 96 no faster at any length, so their short entries in the packaged database are
#: the regular schedule (benchmarks/results/gpu_short_keyblock_*_h100.json)
SHORT_MAX_KEYS = 640
#: the 8-bit-P·V kernel (``pv_bits=8``) streams keys in blocks of this many; its int32 sums of
#: u8·s8 products (≤ 255·127 per key) are exact up to PV8_MAX_KEYS keys
PV8_KEY_BLOCK = 32
PV8_MAX_KEYS = 65536


def pv8_key_permutation(n_keys: int, device=None):
    """The key order of the 8-bit kernel's V operand, as an int64 torch tensor: for each position
    of the permuted key axis (padded to whole blocks), the key it holds — position
    16c + 4t + 2a + b ↔ key 16c + 8a + 2t + b, the order in which a thread's scores (keys
    8a + 2t + b of its two 8-key score tiles) fill bytes k = 4t + 2a + b of the u8 A fragment
    of ``mma.m16n8k32``. ``tvm_kernels.cuda.quantize_v`` writes V in this order (the formula is
    inlined there); this is its specification, which the tests hold the kernel to."""
    import torch

    padded = -(-n_keys // PV8_KEY_BLOCK) * PV8_KEY_BLOCK
    pos = torch.arange(padded, device=device)
    r = pos % 16
    return pos - r + 8 * ((r % 4) // 2) + 2 * (r // 4) + r % 2


@dataclass(frozen=True)
class CudaAttentionSchedule:
    """Knobs of one attention kernel: ``warps`` × 16 × ``row_tiles`` query rows per CTA,
    ``key_block`` keys per step, ``poly_quarters`` quarters of each step's exponentials on the
    FMA pipe (the rest on the MUFU ``ex2`` unit), ``stages`` key blocks in flight in shared
    memory (cp.async pipeline), ``row_tiles`` 16-row tiles per warp, ``wgmma_pv`` P·V on Hopper's
    warpgroup MMA, ``min_blocks`` CTAs per SM promised in ``__launch_bounds__`` (ptxas then caps
    the registers to fit them), ``exp_table`` the no-shift softmax's exps read from a table of
    the 2D+1 possible scores."""

    warps: int = 4
    key_block: int = 64
    poly_quarters: int = 0  # quarters of the exponentials computed on the FMA pipe (0..3)
    stages: int = 2
    row_tiles: int = 1  # 16-row tiles per warp (2: each V fragment feeds twice the mmas)
    wgmma_pv: int = 0  # 1: P·V as one warpgroup wgmma per 16 keys (sm_90a; 4·k warps, 1 row tile)
    # CTAs per SM promised to ptxas (__launch_bounds__): caps registers; 0: none
    min_blocks: int = 0
    exp_table: int = 0  # 1: no-shift softmax reads 2**(s·coef) from a (2D+2)-entry shared table

    def check(self) -> None:
        """Raise ValueError for knob values the kernel template cannot generate."""
        if self.poly_quarters not in (0, 1, 2, 3):
            raise ValueError(f"poly_quarters must be 0..3, got {self.poly_quarters}")
        if self.row_tiles not in (1, 2):
            raise ValueError(f"row_tiles must be 1 or 2, got {self.row_tiles}")
        if self.wgmma_pv not in (0, 1):
            raise ValueError(f"wgmma_pv must be 0 or 1, got {self.wgmma_pv}")
        if self.wgmma_pv and (self.warps % 4 or self.row_tiles != 1):
            raise ValueError("wgmma_pv needs whole warpgroups (warps 4 or 8) and row_tiles 1")
        if self.exp_table not in (0, 1):
            raise ValueError(f"exp_table must be 0 or 1, got {self.exp_table}")
        if self.exp_table and self.poly_quarters:
            raise ValueError("exp_table and poly_quarters are two ways off the MUFU: pick one")
        if self.min_blocks not in (0, 1, 2, 3, 4):
            raise ValueError(f"min_blocks must be 0..4, got {self.min_blocks}")
        if self.stages not in (2, 3, 4):
            raise ValueError(f"stages must be 2, 3 or 4, got {self.stages}")
        if self.warps not in (1, 2, 4, 8):
            raise ValueError(f"warps must be 1, 2, 4 or 8, got {self.warps}")
        if self.key_block not in (32, 64, 128):
            raise ValueError(f"key_block must be 32, 64 or 128, got {self.key_block}")
        if self.key_block > 32 * self.warps:
            raise ValueError(
                f"key_block {self.key_block} needs at least {self.key_block // 32} warps")


def default_schedule(dv: int) -> CudaAttentionSchedule:
    """Untuned default (e.g. sm_80): the H100 tuning's winner for every dv ≤ 128, 4 warps × 64
    keys × 2 row tiles; big heads take 4 warps × 32 keys × 1 row tile to keep registers and
    shared memory in check."""
    if dv > 128:
        return CudaAttentionSchedule(warps=4, key_block=32)
    return CudaAttentionSchedule(warps=4, key_block=64, row_tiles=2)


def db_path() -> Path:
    """The user's tuning database (``$BINATTN_CACHE`` or ``~/.cache/binattn``)/cuda_tuned.json."""
    root = os.environ.get("BINATTN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                           "binattn")
    return Path(root) / "cuda_tuned.json"


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def schedule_for(arch: str, dtype: str, dv: int, db: Optional[Path] = None,
                 short: bool = False) -> CudaAttentionSchedule:
    """Tuned schedule for (arch, dtype, dv): user DB, then packaged DB, then the default.

    ``short``: the kernel for sequences of at most ``SHORT_MAX_KEYS`` keys (DB key ``…/short``);
    without an entry of its own it is the regular schedule with 32-key blocks (and mma.sync P·V),
    which pads a short sequence less (ViT-B's 197 keys: 224 computed instead of 256)."""
    key = f"{dtype}/dv{dv}{'/short' if short else ''}"
    for path in ([db] if db else [db_path(), PACKAGED_DB]):
        entry = _read(path).get(arch, {}).get(key)
        if entry:
            sched = CudaAttentionSchedule(**entry)
            sched.check()
            return sched
    if short:
        regular = schedule_for(arch, dtype, dv, db)
        return replace(regular, key_block=32, wgmma_pv=0,
                       stages=regular.stages if not regular.wgmma_pv else 2)
    return default_schedule(dv)


def record_schedule(arch: str, dtype: str, dv: int, schedule: CudaAttentionSchedule,
                    db: Optional[Path] = None, short: bool = False) -> Path:
    """Store a tuned schedule in the database (atomically replaced); returns the DB path."""
    schedule.check()
    path = db or db_path()
    data = _read(path)
    data.setdefault(arch, {})[f"{dtype}/dv{dv}{'/short' if short else ''}"] = asdict(schedule)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)
    return path


def dv_bucket(dv: int) -> Optional[int]:
    """Smallest built value head size >= dv, or None when dv is larger than all of them."""
    return next((b for b in DV_BUCKETS if b >= dv), None)
