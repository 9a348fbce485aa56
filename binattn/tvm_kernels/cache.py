"""On-disk cache of built TVM kernel libraries, keyed by target + shape bucket + dtype + schedule
(+ a fingerprint of binattn's kernel sources and the TVM version).

What it does: ``KernelCache.get(key, build)`` returns a loaded module for ``key``: from memory,
else from ``<root>/<digest>.so`` on disk, else by calling ``build()`` (which returns anything
with ``export_library(path)``, e.g. ``tvm.compile(...)``'s Executable), writing the library
atomically (temp file + rename, so a crash never leaves half a library under the final name)
and loading it. Each entry has a ``.json`` sidecar with its key and the library's SHA-256; an
entry whose bytes do not match (truncated, overwritten: loading such a file can kill the process
with SIGBUS, so it is checked before loading) or that fails to load (another ABI) is deleted and
rebuilt. Loading uses ``tvm_ffi.load_module``, so a machine with
only apache-tvm-ffi (no TVM compiler) can run libraries built elsewhere.

Device-neutral: the CUDA provider uses the same class with its own key fields.
What it does not: decide what to build (``cpu_build``) or what a key means beyond its fields.

Location: ``$BINATTN_CACHE_DIR/kernels`` if set, else ``~/.cache/binattn/kernels``
(``$XDG_CACHE_HOME`` respected).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .._files import user_cache_dir

CACHE_VERSION = 1
_KERNEL_SOURCES = ("tvm_kernels", "schedules")  # packages whose code decides what a build holds
_fingerprint: Optional[str] = None


def source_fingerprint() -> str:
    """SHA-256 (short) of binattn's kernel and schedule sources and the installed TVM version:
    part of every key, so a library built by other kernel code is never loaded (editing or
    upgrading binattn rebuilds instead of silently reusing a stale kernel)."""
    global _fingerprint
    if _fingerprint is None:
        from importlib import metadata

        h = hashlib.sha256()
        pkg = Path(__file__).resolve().parent.parent
        for sub in _KERNEL_SOURCES:  # recursive: the kernels live in cpu/ and cuda/
            for src in sorted((pkg / sub).rglob("*.py")):
                h.update(str(src.relative_to(pkg)).encode() + b"\0" + src.read_bytes())
        try:
            h.update(metadata.version("apache-tvm").encode())
        except metadata.PackageNotFoundError:
            h.update(b"no-tvm")
        _fingerprint = h.hexdigest()[:16]
    return _fingerprint


@dataclass(frozen=True)
class CacheKey:
    """Everything a built library depends on. ``schedule`` is the knobs' text form."""

    kernel: str
    target: str
    bucket: str
    dtype: str
    schedule: str
    extra: tuple = field(default_factory=tuple)

    def digest(self) -> str:
        text = json.dumps([CACHE_VERSION, source_fingerprint(), *asdict(self).values()],
                          default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def filename(self) -> str:
        return f"{self.kernel}-{self.digest()}"


@dataclass
class CacheStats:
    memory_hits: int = 0
    disk_hits: int = 0
    builds: int = 0
    corrupt_rebuilt: int = 0


def load_library(path: str) -> Any:
    """Load a kernel library with the lightest loader available."""
    import tvm_ffi

    return tvm_ffi.load_module(path)


class KernelCache:
    """Memory + disk cache of kernel libraries (see module docstring)."""

    def __init__(self, root: Optional[Path] = None, loader: Callable[[str], Any] = load_library):
        self.root = Path(root) if root is not None else user_cache_dir() / "kernels"
        self.loader = loader
        self.stats = CacheStats()
        self._memory: dict[str, Any] = {}
        self._lock = threading.Lock()

    def path(self, key: CacheKey) -> Path:
        return self.root / f"{key.filename()}.so"

    def get(self, key: CacheKey, build: Callable[[], Any]) -> Any:
        """The loaded module for ``key``, building and storing it on a miss."""
        name = key.filename()
        with self._lock:
            module = self._memory.get(name)
            if module is not None:
                self.stats.memory_hits += 1
                return module
            module = self._load_existing(key)
            if module is None:
                module = self._build_and_store(key, build)
            self._memory[name] = module
            return module

    def _load_existing(self, key: CacheKey) -> Any:
        path = self.path(key)
        if not path.exists():
            return None
        try:
            expected = json.loads(path.with_suffix(".json").read_text()).get("sha256")
            if expected != _sha256(path):
                raise ValueError("checksum mismatch")
            module = self.loader(str(path))
        except Exception:  # noqa: BLE001 - any bad entry is rebuilt
            self.stats.corrupt_rebuilt += 1
            path.unlink(missing_ok=True)
            return None
        self.stats.disk_hits += 1
        return module

    def _build_and_store(self, key: CacheKey, build: Callable[[], Any]) -> Any:
        built = build()
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{key.filename()}.", suffix=".so")
        os.close(fd)
        try:
            built.export_library(tmp)
            digest = _sha256(Path(tmp))
            sidecar = path.with_suffix(".json")
            sidecar.write_text(json.dumps(dict(asdict(key), sha256=digest), default=str,
                                          indent=1))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.stats.builds += 1
        return self.loader(str(path))

    def entries(self) -> list[dict]:
        """Keys of the libraries on disk (from their sidecars)."""
        if not self.root.exists():
            return []
        out = []
        for sidecar in sorted(self.root.glob("*.json")):
            try:
                out.append(json.loads(sidecar.read_text()))
            except (OSError, ValueError):
                continue
        return out

    def clear_memory(self) -> None:
        """Forget loaded modules (the next get reads the disk again); for tests and tools."""
        with self._lock:
            self._memory.clear()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


_default: Optional[KernelCache] = None


def default_cache() -> KernelCache:
    """The process-wide cache under the user cache dir."""
    global _default
    if _default is None:
        _default = KernelCache()
    return _default
