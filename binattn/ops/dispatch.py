"""Kernel dispatch for binattn's custom ops: pick a built kernel or fall back to the reference.

What it does: keeps a registry of kernels per (op, device type), filled by kernel providers
(``binattn.tvm_kernels.cpu.dispatch`` and ``cpu.backward_dispatch`` for LLVM,
``binattn.tvm_kernels.cuda.dispatch`` for CUDA: ``PROVIDERS``), which are imported lazily on
the first call so ``import binattn`` stays light and works without the TVM compiler. For each
call it runs the first kernel whose ``supports`` accepts the arguments; otherwise it runs the
reference, warns once per reason, and records the reason so reports can say which path ran
(``kernel_report()``).

What it does not: build kernels (the providers do) or decide numerics (the reference is the
contract every kernel meets).

``BINATTN_KERNELS=reference`` (or ``with reference_only():``) forces the reference everywhere.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

#: the modules that register a device's kernels, imported in this order on its first call
PROVIDERS = {
    "cpu": ("binattn.tvm_kernels.cpu.dispatch", "binattn.tvm_kernels.cpu.backward_dispatch"),
    "cuda": ("binattn.tvm_kernels.cuda.dispatch",),
}


@dataclass
class Kernel:
    """A kernel for one op on one device type.

    ``supports(*args, **kwargs)`` returns None when the kernel can run these arguments, else a
    short reason (e.g. "pv_bits=8 not built"), which ends up in the fallback warning.
    """

    name: str
    fn: Callable
    supports: Callable[..., Optional[str]]


_registry: dict[tuple[str, str], list[Kernel]] = {}
_provider_state: dict[str, Optional[str]] = {}  # device -> None (loaded) or error text
_last_path: dict[tuple[str, str], str] = {}
_warned: set[tuple[str, str, str]] = set()
_local = threading.local()
_lock = threading.Lock()


def register_kernel(op: str, device_type: str, kernel: Kernel) -> None:
    """Add a kernel; later registrations take precedence over earlier ones."""
    _registry.setdefault((op, device_type), []).insert(0, kernel)


def _load_provider(device_type: str) -> Optional[str]:
    """Import the providers for a device once; return the error text if any failed."""
    with _lock:
        if device_type not in _provider_state:
            modules = PROVIDERS.get(device_type)
            errors = [] if modules else [f"no kernel provider for device type {device_type!r}"]
            for module in modules or ():
                try:
                    importlib.import_module(module)
                except Exception as exc:  # noqa: BLE001 - any failure means "use the reference"
                    errors.append(f"{module} could not load: {type(exc).__name__}: {exc}")
            _provider_state[device_type] = "; ".join(errors) or None
        return _provider_state[device_type]


def reference_forced() -> bool:
    """True when the reference path is forced by env var or context manager."""
    return os.environ.get("BINATTN_KERNELS", "").lower() == "reference" or getattr(
        _local, "force_reference", False)


@contextlib.contextmanager
def reference_only() -> Iterator[None]:
    """Run every binattn op on the reference path inside this block."""
    previous = getattr(_local, "force_reference", False)
    _local.force_reference = True
    try:
        yield
    finally:
        _local.force_reference = previous


def _fallback(op: str, device_type: str, reason: str) -> None:
    _last_path[(op, device_type)] = f"reference ({reason})"
    key = (op, device_type, reason)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"binattn: {op} on {device_type} runs the reference path: {reason}",
                      RuntimeWarning, stacklevel=3)


def run(op: str, device_type: str, reference: Callable, *args, **kwargs):
    """Call the first kernel that supports the arguments, else the reference (with a warning)."""
    if reference_forced():
        _last_path[(op, device_type)] = "reference (forced)"
        return reference(*args, **kwargs)
    provider_error = _load_provider(device_type)
    reasons = []
    for kernel in _registry.get((op, device_type), []):
        reason = kernel.supports(*args, **kwargs)
        if reason is None:
            _last_path[(op, device_type)] = kernel.name
            return kernel.fn(*args, **kwargs)
        reasons.append(f"{kernel.name}: {reason}")
    if provider_error:
        reasons.append(provider_error)
    if not reasons:
        reasons.append(f"no kernel registered for {op} on {device_type}")
    _fallback(op, device_type, "; ".join(reasons))
    return reference(*args, **kwargs)


def record(op: str, device_type: str, path: str) -> None:
    """Note that ``op`` on ``device_type`` ran ``path`` outside :func:`run` (for
    :func:`kernel_report`)."""
    _last_path[(op, device_type)] = path


def kernel_report() -> dict[str, str]:
    """Which path each (op, device) took last: a kernel name or 'reference (<reason>)'."""
    return {f"{op}/{dev}": path for (op, dev), path in sorted(_last_path.items())}


def used_fallback() -> bool:
    """True if any op ran the reference path for a reason other than being forced."""
    return any(p.startswith("reference (") and p != "reference (forced)"
               for p in _last_path.values())
