"""File helpers shared by the layers (imports nothing from binattn, so any layer may use it).

Atomic output files: write to a temporary file beside the target, then rename; used by every
writer of the ``export`` and ``hw_targets`` packages so that an error never leaves a
half-written file at the user's output path. What it does not: locking. And
:func:`user_cache_dir`, the cache root of the kernel cache and the tuning database.
"""
from __future__ import annotations

import functools
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` (mode 0666 & ~umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def user_cache_dir() -> Path:
    """binattn's cache root: ``$BINATTN_CACHE_DIR`` or ``$XDG_CACHE_HOME/binattn``. Read on
    every kernel call (the tuning database follows it), so the Path is remembered per value
    of the three variables: three dict lookups, no path arithmetic."""
    env = os.environ
    return _cache_root(env.get("BINATTN_CACHE_DIR"), env.get("XDG_CACHE_HOME"), env.get("HOME"))


@functools.lru_cache(maxsize=16)
def _cache_root(override: Optional[str], xdg: Optional[str], home: Optional[str]) -> Path:
    if override:
        return Path(override)
    base = xdg or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "binattn"
