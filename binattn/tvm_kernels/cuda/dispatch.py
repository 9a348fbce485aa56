"""CUDA kernel provider: loads binattn's prebuilt TVM kernels with apache-tvm-ffi, registers them.

What it does: imported lazily by ``binattn.ops.dispatch`` on the first CUDA call. Registers
``sign_pack``, ``popcount_scores`` and ``binary_attention`` kernels whose ``supports`` names the
reason when a call cannot run on them (no library for this GPU's arch, apache-tvm-ffi missing,
an option the kernel does not implement, …) so the dispatcher falls back to the reference with
a one-time warning naming it. Kernel libraries are looked up in ``$BINATTN_CUDA_KERNELS``, then the
package data (``binattn/kernels``), then the user cache (``~/.cache/binattn/cuda_kernels``,
where ``binattn build-kernels`` writes by default). torch CUDA tensors go straight through
DLPack on torch's current stream.

What it does not: need or import the TVM compiler (only ``tvm_ffi``), build kernels
(``cuda_build``), or hold math (the reference defines it; tests compare against it).
"""
from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Any, Optional

import torch

from ...ops import dispatch, reference
from ...ops.options import AttentionOptions, AttentionTensors
from ...schedules.cuda.attention import PV8_KEY_BLOCK, PV8_MAX_KEYS, SCORE_MAGIC, dv_bucket
from .build import read_manifest

LOG2E = 1.4426950408889634
QBITS_WORDS = 8
MAX_HEAD_DIM = 256
PACK_DTYPES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}
PV_DTYPES = {torch.float16: "float16", torch.bfloat16: "bfloat16"}
MAX_GRID_YZ = 65535  # the kernels put batch × heads on gridDim.y / gridDim.z
_lock = threading.Lock()
_libraries: dict[str, Any] = {}  # capability -> (tvm_ffi module, manifest entry) or error text
_by_index: dict[int, Any] = {}  # device index -> the same, without asking CUDA each call
_functions: dict[tuple[int, str], Any] = {}  # (device index, symbol) -> (function, tvm_ffi device)


def kernel_dirs() -> list[Path]:
    """Where kernel libraries are looked up, in order."""
    dirs = []
    if os.environ.get("BINATTN_CUDA_KERNELS"):
        dirs.append(Path(os.environ["BINATTN_CUDA_KERNELS"]))
    dirs.append(package_kernel_dir())
    dirs.append(user_kernel_dir())
    return dirs


def package_kernel_dir() -> Path:
    """The prebuilt libraries shipped as package data (``binattn/kernels``)."""
    return Path(__file__).resolve().parents[2] / "kernels"


def user_kernel_dir() -> Path:
    """Default output of ``binattn build-kernels``: ``$BINATTN_CACHE/cuda_kernels``."""
    root = os.environ.get("BINATTN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                           "binattn")
    return Path(root) / "cuda_kernels"


def arch_candidates(capability: tuple[int, int]) -> list[str]:
    """Library archs that can run on a GPU of this compute capability, best first.

    Exact SASS first (``sm_90a`` on 9.0), then same-major SASS, then PTX builds (sm_80 carries
    PTX) that the driver JIT-compiles for any newer GPU.
    """
    major, minor = capability
    exact = ([f"sm_{major}{minor}a"] if major >= 9 else []) + [f"sm_{major}{minor}"]
    same_major = [f"sm_{major}{m}" for m in range(minor - 1, -1, -1)] if major == 8 else []
    ptx = ["sm_89", "sm_86", "sm_80"] if major >= 8 else []
    return list(dict.fromkeys(exact + same_major + ptx))


def _runs_on(arch: str, entry: dict, capability: tuple[int, int]) -> bool:
    """SASS runs on its own arch and, within major 8, on later minors; PTX runs on any newer GPU."""
    major, minor = capability
    if arch in (f"sm_{major}{minor}a", f"sm_{major}{minor}"):
        return True
    if major == 8 and arch.startswith("sm_8") and int(arch[4:6].rstrip("a")) <= minor:
        return True
    return bool(entry.get("ptx"))


def find_library(capability: tuple[int, int]) -> tuple[Optional[Path], Optional[dict], str]:
    """(directory, manifest entry, arch) of the first usable library, or (None, None, reason)."""
    seen = []
    for directory in kernel_dirs():
        manifest = read_manifest(directory)
        if not manifest:
            continue
        libs = manifest.get("libraries", {})
        seen.extend(libs)
        for arch in arch_candidates(capability):
            entry = libs.get(arch)
            if entry and (directory / entry["file"]).exists() and _runs_on(arch, entry, capability):
                return directory, entry, arch
    built = ", ".join(sorted(set(seen))) or "none"
    return None, None, (f"no CUDA kernel library for sm_{capability[0]}{capability[1]} "
                        f"(built: {built}; run `binattn build-kernels`)")


def _device_index(device: torch.device) -> int:
    return torch.cuda.current_device() if device.index is None else device.index


def _library(device: torch.device):
    """The loaded (module, entry) for this device, or raise RuntimeError with the reason
    (looked up once per device index: eager calls reach this several times each)."""
    index = _device_index(device)
    lib = _by_index.get(index)
    if lib is None:
        key = f"{torch.cuda.get_device_capability(index)}"
        with _lock:
            if key not in _libraries:
                _libraries[key] = _load(torch.cuda.get_device_capability(index))
        lib = _by_index[index] = _libraries[key]
    if isinstance(lib, str):
        raise RuntimeError(lib)
    return lib


def _load(capability: tuple[int, int]):
    try:
        import tvm_ffi
    except ImportError:
        return "apache-tvm-ffi is not installed (pip install apache-tvm-ffi==0.1.14.post1)"
    directory, entry, arch = find_library(capability)
    if directory is None:
        return arch
    try:
        return tvm_ffi.load_module(str(directory / entry["file"])), entry
    except Exception as exc:  # noqa: BLE001 - a broken library means "use the reference"
        return f"{directory / entry['file']} failed to load: {type(exc).__name__}: {exc}"


def library_reason(device: torch.device) -> Optional[str]:
    """None when a kernel library loads for this device, else why not."""
    try:
        _library(device)
        return None
    except RuntimeError as exc:
        return str(exc)


def _call(device: torch.device, name: str, *args) -> None:
    """Run kernel ``name`` of this device's library on torch's current stream."""
    import tvm_ffi

    index = _device_index(device)
    key = (index, name)
    entry = _functions.get(key)
    if entry is None:
        module, _ = _library(device)
        entry = _functions[key] = (module[name], tvm_ffi.device("cuda", index))
    function, ffi_device = entry
    with tvm_ffi.use_raw_stream(ffi_device, _raw_stream(index)):
        function(*args)


def _raw_stream(index: int) -> int:
    """torch's current CUDA stream handle on device ``index`` (the private getter inductor uses
    costs 0.1 µs against 6 µs for ``torch.cuda.current_stream``; the public one where absent)."""
    getter = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    return getter(index) if getter else torch.cuda.current_stream(index).cuda_stream


def pack_lanes(head_dim: int) -> int:
    """Threads per row of the 16-byte-load sign-pack kernels: the fewest that cover ``head_dim``."""
    return next(n for n in (2, 4, 8) if 32 * n >= head_dim)


def vec_sign_pack_name(dtype: str, head_dim: int) -> str:
    """Symbol of the 16-byte-load sign-pack kernel with the fewest lanes per row for ``head_dim``
    (as ``cuda_sign_pack.sign_pack_name(dtype, True, lanes)`` names it)."""
    lanes = pack_lanes(head_dim)
    return f"binattn_sign_pack_{dtype}_v8{'' if lanes == 8 else f'_l{lanes}'}"


def qk_sign_pack_name(dtype: str, head_dim: int) -> str:
    """Symbol of the one-launch q-and-k sign-pack kernel for ``head_dim`` (as
    ``cuda_sign_pack.sign_pack_qk_name(dtype, lanes)`` names it)."""
    return f"binattn_sign_pack_qk_{dtype}_l{pack_lanes(head_dim)}"


def as_bhnd(x: torch.Tensor) -> torch.Tensor:
    """``x [..., N, D]`` as the 4-D ``[B, H, N, D]`` the sign-pack kernels index (a view: leading
    dims of size 1 are added; more than two leading dims are flattened into B)."""
    if x.dim() >= 5:
        return x.reshape(-1, *x.shape[-3:])
    while x.dim() < 4:
        x = x.unsqueeze(0)
    return x


def _row_strided(x: torch.Tensor) -> torch.Tensor:
    """x itself when its last dim is unit-stride (every kernel reads any B, H, N strides), else
    a contiguous copy."""
    return x if x.stride(-1) == 1 or x.shape[-1] == 1 else x.contiguous()


def _quads(x: torch.Tensor) -> Optional[torch.Tensor]:
    """x (16-bit, ``[B, H, N, D]``, any strides on B, H, N) viewed in place as int32 quads
    ``[B, H, N, D/8, 4]`` for the 16-byte-load kernels, or None where it cannot be (D % 8, a
    row start off a 16-byte boundary, D not unit-stride)."""
    if x.shape[-1] % 8 or x.data_ptr() % 16 or x.stride(-1) != 1:
        return None
    if any(stride % 8 for size, stride in zip(x.shape[:-1], x.stride()[:-1]) if size > 1):
        return None
    # a size-1 dim's stride is never used but must be even for view(int32): give it one
    if any(size == 1 and stride % 8 for size, stride in zip(x.shape[:-1], x.stride()[:-1])):
        x = x.as_strided(x.shape, [st if size > 1 else 8 for size, st in
                                   zip(x.shape[:-1], x.stride()[:-1])] + [1])
    return x.view(torch.int32).unflatten(-1, (x.shape[-1] // 8, 4))


def _aligned_quads(x: torch.Tensor) -> torch.Tensor:
    """:func:`_quads` of x, or of an aligned contiguous copy where x's own layout cannot be read
    with 16-byte loads (the one case that copies)."""
    quads = _quads(x)
    if quads is None:
        x = x.contiguous()
        quads = _quads(x if x.data_ptr() % 16 == 0 else x.clone())
    if quads is None:
        raise ValueError(f"16-byte loads need a last dim that is a multiple of 8, got "
                         f"{x.shape[-1]}")
    return quads


def pack_q_and_k(q: torch.Tensor, k: torch.Tensor):
    """The attention kernel's operands: (q bits, k bits, k popcounts in the kernel's
    ``SCORE_MAGIC − popc`` form, Σ|q| per (b, h), Σ|k| per (b, h)) — in one launch of the
    q-and-k sign-pack where the library has it (16-bit q and k of one dtype, D % 8 == 0, rows
    16-byte aligned), else one launch each. q and k are read through their strides (the views
    of a fused QKV projection, a ``transpose(1, 2)``, a GQA ``expand``): no copy."""
    _, entry = _library(q.device)
    dtype = PACK_DTYPES[q.dtype]
    one_launch = k.dtype == q.dtype and dtype in entry.get("sign_pack_qk", ())
    xq, xk = (_quads(q), _quads(k)) if one_launch else (None, None)
    if xq is None or xk is None:
        q_bits, _, q_abs = pack_signs(q, QBITS_WORDS)
        k_bits, k_pop, k_abs = pack_signs(k, QBITS_WORDS, SCORE_MAGIC, -1)
        return q_bits, k_bits, k_pop, q_abs, k_abs
    B, Hq, Nq, _ = q.shape
    Hk, Nk = k.shape[1], k.shape[2]
    q_bits = torch.empty((B * Hq, Nq, QBITS_WORDS), dtype=torch.int32, device=q.device)
    k_bits = torch.empty((B * Hk, Nk, QBITS_WORDS), dtype=torch.int32, device=q.device)
    k_pop = torch.empty((B * Hk, Nk), dtype=torch.int32, device=q.device)
    abs_sum = torch.zeros(B * (Hq + Hk), dtype=torch.float32, device=q.device)
    _call(q.device, qk_sign_pack_name(dtype, q.shape[-1]), xq, xk, q_bits,
          k_bits, k_pop, abs_sum, SCORE_MAGIC, -1, B * Hq)
    return (q_bits.view(*q.shape[:-1], QBITS_WORDS), k_bits.view(*k.shape[:-1], QBITS_WORDS),
            k_pop.view(k.shape[:-1]), abs_sum[:B * Hq], abs_sum[B * Hq:])


def pack_signs(x: torch.Tensor, words: int, pop_offset: int = 0,
               pop_scale: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(bits int32 [..., words], ``pop_offset + pop_scale·popcount`` int32 [...], sum|x| per
    leading-2-dims float32); x is read through its strides (a copy only where D is not
    unit-stride)."""
    lead = x.shape[:-1]
    x4 = _row_strided(as_bhnd(x))
    B, H, N, _ = x4.shape
    bits = torch.empty((B * H, N, words), dtype=torch.int32, device=x.device)
    pops = torch.empty((B * H, N), dtype=torch.int32, device=x.device)
    abs_sum = torch.zeros(B * H, dtype=torch.float32, device=x.device)
    if x4.numel():
        name = f"binattn_sign_pack_{PACK_DTYPES[x.dtype]}"
        _, entry = _library(x.device)
        quads = _quads(x4) if PACK_DTYPES[x.dtype] in entry.get("sign_pack_vec", ()) else None
        if quads is not None:
            x4 = quads
            name = vec_sign_pack_name(PACK_DTYPES[x.dtype], x.shape[-1])  # 16-byte loads
        _call(x.device, name, x4, bits, pops, abs_sum, pop_offset, pop_scale)
    return bits.reshape(*lead, words), pops.reshape(lead), abs_sum


# ---- sign_pack ------------------------------------------------------------------------------

def sign_pack_supports(x: torch.Tensor) -> Optional[str]:
    if x.device.type != "cuda":
        return "not a CUDA tensor"
    if x.dtype not in PACK_DTYPES:
        return f"dtype {x.dtype} (kernel takes float16, bfloat16, float32)"
    if x.dim() == 0:
        return "0-d input"
    if x.shape[-1] > MAX_HEAD_DIM:
        return f"last dim {x.shape[-1]} > {MAX_HEAD_DIM}"
    if x.dim() >= 3 and math.prod(x.shape[:-2]) > MAX_GRID_YZ:
        return f"more than {MAX_GRID_YZ} leading rows (batch × heads)"
    return library_reason(x.device)


def sign_pack_kernel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    bits, pops, _ = pack_signs(x, reference.num_words(x.shape[-1]))
    return bits, pops


# ---- popcount_scores ------------------------------------------------------------------------

def popcount_supports(q_bits: torch.Tensor, k_bits: torch.Tensor, D: int) -> Optional[str]:
    if q_bits.device.type != "cuda":
        return "not a CUDA tensor"
    if q_bits.shape[:-2] != k_bits.shape[:-2]:
        return "broadcast batch dims (kernel takes equal ones)"
    if D > MAX_HEAD_DIM:
        return f"D={D} > {MAX_HEAD_DIM}"
    if q_bits.numel() == 0 or k_bits.numel() == 0:
        return "empty input"
    if math.prod(q_bits.shape[:-2]) > MAX_GRID_YZ:
        return f"batch × heads > {MAX_GRID_YZ}"
    return library_reason(q_bits.device)


def popcount_kernel(q_bits: torch.Tensor, k_bits: torch.Tensor, D: int) -> torch.Tensor:
    n_q, n_k, words = q_bits.shape[-2], k_bits.shape[-2], q_bits.shape[-1]
    q3 = q_bits.contiguous().reshape(-1, n_q, words)
    k3 = k_bits.contiguous().reshape(-1, n_k, words)
    scores = torch.empty((q3.shape[0], n_q, n_k), dtype=torch.int32, device=q_bits.device)
    _call(q_bits.device, "binattn_popcount_scores", q3, k3, scores, int(D))
    return scores.reshape(*q_bits.shape[:-2], n_q, n_k)


# ---- binary_attention -----------------------------------------------------------------------

def attention_supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       tensors: AttentionTensors, options: AttentionOptions) -> Optional[str]:
    if q.device.type != "cuda":
        return "not a CUDA tensor"
    if v.dtype not in PV_DTYPES:
        return f"v dtype {v.dtype} (kernel takes float16/bfloat16 V)"
    if q.dtype not in PACK_DTYPES or k.dtype not in PACK_DTYPES:
        return f"q/k dtype {q.dtype}/{k.dtype}"
    if options.binarizer != "sign":
        return f"binarizer={options.binarizer!r} (kernel implements 'sign')"
    if options.top_n is not None and options.top_n < k.shape[-2]:
        return "top_n not implemented in the CUDA kernel"
    if tensors.sinks is not None or options.soft_cap is not None:
        return "attention sinks / soft_cap not implemented in the CUDA kernel"
    if options.pv_bits == 8:
        reason = _pv8_reason(q.device, v, k.shape[-2])
        if reason:
            return reason
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"head dim {q.shape[-1]} > {MAX_HEAD_DIM}"
    if v.shape[-1] % 8 or dv_bucket(v.shape[-1]) is None:
        return f"value head dim {v.shape[-1]} (kernel takes multiples of 8 up to 256)"
    if min(q.shape[-2], k.shape[-2], q.shape[0], q.shape[1]) == 0:
        return "empty input"
    if q.shape[0] * max(q.shape[1], 1) > MAX_GRID_YZ:
        return f"batch × heads = {q.shape[0] * q.shape[1]} > {MAX_GRID_YZ}"
    if options.scale_mode == "static" and (tensors.q_scale is None or tensors.k_scale is None):
        return "static scale_mode without q_scale/k_scale"
    for name in ("bias", "attn_mask", "bias_index"):
        t = getattr(tensors, name)
        if t is not None and t.device != q.device:
            return f"{name} on {t.device}"
    return library_reason(q.device)


def _pv8_reason(device: torch.device, v: torch.Tensor, n_keys: int) -> Optional[str]:
    """Why the 8-bit P·V kernel cannot take this call, or None."""
    if n_keys > PV8_MAX_KEYS:
        return f"pv_bits=8 with {n_keys} keys (the int32 sums are exact up to {PV8_MAX_KEYS})"
    try:
        _, entry = _library(device)
    except RuntimeError as exc:
        return str(exc)
    built = entry.get("attention_pv8", {}).get(PV_DTYPES[v.dtype], ())
    if dv_bucket(v.shape[-1]) not in built:
        return f"pv_bits=8: no 8-bit P·V kernel in this library for dv={v.shape[-1]}"
    return None


def pv8_symbol(dtype: str, dv: int, has_bias: bool, table: bool = False) -> str:
    """Exported name of the 8-bit-P·V attention kernel (as
    ``cuda_attention_pv8.attention_pv8_name`` names it; a test checks they agree)."""
    kind = "_table" if table else "_bias" if has_bias else ""
    return f"binattn_attention_pv8_{dtype}_dv{dv}{kind}"


def quantize_v8(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """V as the 8-bit kernel reads it, in two launches (``cuda_quantize_v``): (int8 V,
    transposed to ``[B, Hkv, dv, keys]`` with the keys permuted as ``pv8_key_permutation`` says
    and zero-padded to whole blocks, dv padded to its bucket, viewed as int32; the per-column
    output scale ``1 / (255·(127/max|v| + 1e-6))`` as float32 ``[B·Hkv·dv]``). The int8 values
    are the reference's (``reference.quantize_v_s8``: the same float32 products, rounded alike)."""
    B, H, N, Dv = v.shape
    dv, dtype = dv_bucket(Dv), PV_DTYPES[v.dtype]
    quads = _aligned_quads(v)  # read through V's strides where its rows are 16-byte aligned
    amax = torch.zeros((B * H, Dv), dtype=torch.int32, device=v.device)
    _call(v.device, f"binattn_v8_amax_{dtype}", quads, amax)
    inv_step = torch.zeros((B * H, dv), dtype=torch.float32, device=v.device)
    inv_step[:, :Dv] = 127.0 / amax.view(torch.float32).clamp_min(1e-12)  # reference.v_inverse_step
    scale = torch.where(inv_step > 0, 1.0 / (255.0 * (inv_step + 1e-6)), 0.0)
    n_words = -(-N // PV8_KEY_BLOCK) * PV8_KEY_BLOCK // 4
    v8 = torch.empty((B * H, dv, n_words), dtype=torch.int32, device=v.device)
    _call(v.device, f"binattn_v8_pack_{dtype}", quads, inv_step, v8)
    return v8.view(B, H, dv, n_words), scale.reshape(-1)


def _additive(bias, attn_mask, n_q, n_k, device) -> Optional[torch.Tensor]:
    """bias + mask as one float32 additive tensor of <= 4 dims (masks folded in on the host)."""
    mask = reference.additive_mask(attn_mask, False, n_q, n_k, torch.float32, device)
    add = None if bias is None else bias.to(torch.float32)
    if mask is not None:
        add = mask if add is None else add + mask
    return add


def _broadcast_strides(add: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """(flat storage the kernel indexes, element strides over [B, H, Nq, Nk]; 0 where
    broadcast). The tensor's own strides are kept, so a view — e.g. ``RelPosBias``'s
    ``table[index]`` gathered as [N, N, H] and permuted to [H, N, N] — is read in place, without
    a contiguous copy; only a span past int32 indexing is copied first."""
    while add.dim() < 4:
        add = add.unsqueeze(0)
    strides = [0 if size == 1 else stride for size, stride in zip(add.shape, add.stride())]
    span = 1 + sum((size - 1) * stride for size, stride in zip(add.shape, strides))
    if span >= 2 ** 31:
        add = add.contiguous()
        strides = [0 if size == 1 else stride for size, stride in zip(add.shape, add.stride())]
        span = 1 + sum((size - 1) * stride for size, stride in zip(add.shape, strides))
    return add.as_strided((span,), (1,)), strides


def _scales(q, k, scale_mode, q_scale, k_scale, q_abs, k_abs):
    """(s_q per (b, hq), s_k table, ks_group, extra multiplier) as the kernel reads them. The
    static and unit scales carry Σ|q|·0 and Σ|k|·0 (``reference.magnitude_scale``): NaN where
    q or k of the (b, h) holds a NaN or Inf, which the kernel turns into a NaN output."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    if scale_mode == "mean_abs":
        return q_abs, k_abs, Hq // Hkv, 1.0 / (Nq * D * Nk * D)
    abs_sum = (q_abs.view(B, Hkv, Hq // Hkv) + k_abs.view(B, Hkv, 1)).view(B, Hq, 1, 1)
    s_q = reference.magnitude_scale(abs_sum, scale_mode, q_scale)
    if scale_mode == "static":
        if k_scale.dim() >= 3:
            k_scale = reference.expand_kv_heads(k_scale, Hq)
        s_k = torch.broadcast_to(k_scale.float(), (B, Hq, 1, 1)).reshape(-1).contiguous()
    else:
        s_k = _ones(q.device, B * Hq)
    return torch.broadcast_to(s_q, (B, Hq, 1, 1)).reshape(-1).contiguous(), s_k, 1, 1.0


KERNEL_VARIANTS = ("auto", "short", "long")


def _use_short(entry: dict, dtype: str, bucket: int, n_keys: int, variant: str) -> bool:
    """Whether the short-sequence kernel runs: up to the library's ``short_max_keys`` keys
    (``variant`` "short"/"long" forces it), where the library has one of its own."""
    if variant not in KERNEL_VARIANTS:
        raise ValueError(f"variant must be one of {KERNEL_VARIANTS}, got {variant!r}")
    has_short = bucket in entry.get("attention_short", {}).get(dtype, ())
    return has_short and (variant == "short" or
                          (variant == "auto" and n_keys <= entry.get("short_max_keys", 0)))


def attention_symbol(device: torch.device, v_dtype: torch.dtype, dv: int, has_bias: bool,
                     n_keys: int, variant: str = "auto", table: bool = False) -> str:
    """Exported name of the attention kernel for this call (``table``: the bias-table kernel):
    the short-sequence kernel (its own schedule, 32-key blocks by default) up to the library's
    ``short_max_keys`` keys, the regular one beyond (``variant`` "short"/"long" forces one).
    Where the short schedule equals the regular one the library holds only the regular kernel
    (manifest ``attention_short`` lists the value head sizes that have their own), and that is
    the short-sequence kernel."""
    _, entry = _library(device)
    dtype, bucket = PV_DTYPES[v_dtype], dv_bucket(dv)
    short = _use_short(entry, dtype, bucket, n_keys, variant)
    kind = "_table" if table else "_bias" if has_bias else ""
    return f"binattn_attention_{dtype}_dv{bucket}{kind}{'_short' if short else ''}"


def table_capacity(device: torch.device, v_dtype: torch.dtype, dv: int, n_keys: int,
                   variant: str = "auto", pv_bits: Optional[int] = None) -> int:
    """Bias-table rows the table kernel of this call holds in shared memory (manifest
    ``table_rows``); a larger table is gathered on the host for the dense-bias kernel."""
    _, entry = _library(device)
    dtype, bucket = PV_DTYPES[v_dtype], dv_bucket(dv)
    if pv_bits == 8:
        key = f"pv8/{dtype}/dv{bucket}"
    else:
        short = _use_short(entry, dtype, bucket, n_keys, variant)
        key = f"{dtype}/dv{bucket}{'/short' if short else ''}"
    return entry.get("table_rows", {}).get(key, 0)


def _table_inputs(table: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                     list[int]]:
    """(flat float32 table, flat int32 index, [sb, sh, sq, sk]) as the table kernel reads
    them: row and head strides of the table (head stride 0 for one shared column), then the
    index's strides. The kernel counts the table's rows from the flat span, so a table whose
    rows are broadcast (row stride 0) is made contiguous first."""
    table = table.to(torch.float32)
    if table.stride(0) == 0 and table.shape[0] > 1:
        table = table.contiguous()
    index = index.to(torch.int32)
    row_stride, head_stride = table.stride(0), table.stride(1) if table.shape[1] > 1 else 0
    span = 1 + (table.shape[0] - 1) * row_stride + (table.shape[1] - 1) * head_stride
    index_span = 1 + sum((size - 1) * stride for size, stride in zip(index.shape, index.stride()))
    return (table.as_strided((span,), (1,)), index.as_strided((index_span,), (1,)),
            [row_stride, head_stride, *index.stride()])


def uses_table_kernel(q, v, bias, attn_mask, pv_bits, bias_index, variant: str = "auto") -> bool:
    """Whether a call with a bias table runs a table kernel (no mask to fold in, the table fits
    the kernel's shared memory); otherwise the table is gathered on the host."""
    return (bias_index is not None and attn_mask is None and
            bias.shape[0] <= table_capacity(q.device, v.dtype, v.shape[-1], bias_index.shape[1],
                                            variant, pv_bits))


def attention_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     tensors: AttentionTensors, options: AttentionOptions,
                     out: Optional[torch.Tensor] = None, variant: str = "auto") -> torch.Tensor:
    """The kernel behind ``binattn::binary_attention`` on CUDA (writes into ``out`` if given;
    ``variant`` as in :func:`attention_symbol`)."""
    bias, attn_mask, bias_index = tensors.bias, tensors.attn_mask, tensors.bias_index
    scale, pv_bits, is_causal = options.scale, options.pv_bits, options.is_causal
    B, Hq, Nq, D = q.shape
    Hkv, Nk, Dv = k.shape[1], k.shape[2], v.shape[-1]
    q_bits, k_bits, k_pop, q_abs, k_abs = pack_q_and_k(q, k)
    s_q, s_k, ks_group, extra = _scales(q, k, options.scale_mode, tensors.q_scale,
                                        tensors.k_scale, q_abs, k_abs)
    softmax_scale = 1.0 / math.sqrt(D) if scale is None else scale
    table = uses_table_kernel(q, v, bias, attn_mask, pv_bits, bias_index, variant)
    index = _dummy(q.device, torch.int32)
    if table:
        flat, index, strides = _table_inputs(bias, bias_index)
        add = flat
    else:
        add = _additive(reference.dense_bias(bias, bias_index), attn_mask, Nq, Nk, q.device)
        if add is None:
            flat, strides = _dummy(q.device), [0, 0, 0, 0]
        else:
            flat, strides = _broadcast_strides(add)
    if out is None:
        out = reference.empty_output(q, v)
    mult = float(softmax_scale * LOG2E * extra)
    if pv_bits == 8:  # the two-pass kernel with P and V on the 8-bit tensor cores
        v8, v_scale = quantize_v8(v)
        name = pv8_symbol(PV_DTYPES[v.dtype], dv_bucket(Dv), add is not None, table)
        _call(q.device, name, q_bits, k_bits, k_pop, v8, v_scale, out.view(torch.int32), s_q,
              s_k, flat, index, int(bool(is_causal)), ks_group, *strides, mult, D)
        return _poison_non_finite_heads(out, s_q, s_k, ks_group)
    name = attention_symbol(q.device, v.dtype, Dv, add is not None, Nk, variant, table)
    _call(q.device, name, q_bits, k_bits, k_pop, _aligned_quads(v), out.view(torch.int32), s_q,
          s_k, flat, index, int(bool(is_causal)), ks_group, *strides,
          mult, D)
    return out


def _poison_non_finite_heads(out: torch.Tensor, s_q: torch.Tensor, s_k: torch.Tensor,
                             ks_group: int) -> torch.Tensor:
    """NaN over the (b, h) whose score multiplier is not finite (a NaN/Inf in its q or k): the
    8-bit kernel's u8 probabilities would turn a NaN score into a finite P, so the NaN policy
    (``reference.nan_unless_finite``) is applied to its output on the device (no host read;
    one pass over the output, pv_bits=8 only). The 16-bit kernels do it in their prologue."""
    B, Hq = out.shape[:2]
    coef = s_q.view(B, Hq) * s_k.view(B, -1).repeat_interleave(ks_group, dim=1)
    return out.masked_fill_(~torch.isfinite(coef)[:, :, None, None], float("nan"))


_dummies: dict = {}


def _ones(device: torch.device, n: int) -> torch.Tensor:
    """n float32 ones (a slice of one buffer per device, grown as needed)."""
    ones = _dummies.get((device, "ones"))
    if ones is None or ones.numel() < n:
        ones = _dummies[device, "ones"] = torch.ones(max(n, 1024), device=device)
    return ones[:n]


def _dummy(device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A 1-element tensor standing in for 'no bias' / 'no index' (allocated once per device)."""
    if (device, dtype) not in _dummies:
        _dummies[device, dtype] = torch.zeros(1, dtype=dtype, device=device)
    return _dummies[device, dtype]


dispatch.register_kernel("sign_pack", "cuda", dispatch.Kernel(
    "tvm-cuda:sign_pack", sign_pack_kernel, sign_pack_supports))
dispatch.register_kernel("popcount_scores", "cuda", dispatch.Kernel(
    "tvm-cuda:popcount_scores", popcount_kernel, popcount_supports))
dispatch.register_kernel("binary_attention", "cuda", dispatch.Kernel(
    "tvm-cuda:binary_attention", attention_kernel, attention_supports))
