"""The tuned-schedule database: a directory that ``binattn tune`` writes and kernel builds read.

Layout of ``<db>/``:
  ``records.json``          {target: {workload: {"knobs": {...}, "ms": t, "method": ...,
                            "trials": n, "ms_workdir": <subdir or null>}}}
  ``meta_schedule/<name>/`` TVM meta_schedule's own JSON database (database_workload.json,
                            database_tuning_record.json, logs/) for workloads tuned that way.

``lookup`` returns the best record for (target, workload) or None; builds then fall back to the
template's defaults (``cpu_knobs``). Writes are atomic (temp file + rename).
Default location: ``$BINATTN_TUNE_DB`` or ``<user cache dir>/tuning``.

What it does not: tune (``binattn.tvm_kernels.cpu.tune``) or build kernels.
"""
from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Optional

from .._files import user_cache_dir


#: how long a records file's modification time is trusted before it is stat'ed again (kernel
#: calls consult the database on every call); writes made by this process are seen at once
RESTAT_SECONDS = 1.0
_writes = 0   # records files written by this process (any database object)


def default_db_dir() -> Path:
    """``$BINATTN_TUNE_DB`` or the cache root's ``tuning`` (the same Path object while neither
    changes: :func:`active_db` compares it on every kernel call)."""
    return _db_dir(os.environ.get("BINATTN_TUNE_DB"), user_cache_dir())


@functools.lru_cache(maxsize=16)
def _db_dir(override: Optional[str], cache_root: Path) -> Path:
    return Path(override) if override else cache_root / "tuning"


class TuningDatabase:
    """Best schedule per (target, workload); see module docstring."""

    def __init__(self, root: Optional[Path] = None):
        self.root = Path(root) if root is not None else default_db_dir()
        self._records_path = self.root / "records.json"
        self._cached: Optional[tuple[int, dict]] = None
        self._stat: tuple[float, int, Optional[int]] = (-RESTAT_SECONDS, -1, None)

    @property
    def records_path(self) -> Path:
        return self._records_path

    def meta_schedule_dir(self, workload: str) -> Path:
        return self.root / "meta_schedule" / workload

    def _mtime(self) -> Optional[int]:
        """The records file's mtime (None: no file), stat'ed at most every ``RESTAT_SECONDS``
        unless this process wrote a records file since."""
        checked, writes, mtime = self._stat
        now = time.monotonic()
        if now - checked >= RESTAT_SECONDS or writes != _writes:
            try:
                mtime = self.records_path.stat().st_mtime_ns
            except FileNotFoundError:
                mtime = None
            self._stat = (now, _writes, mtime)
        return mtime

    def version(self) -> tuple[Path, Optional[int]]:
        """Changes whenever the records may have: (directory, records file mtime or None)."""
        return self.root, self._mtime()

    def records(self) -> dict:
        """All records; re-read only when the file changed (kernel calls look up every time)."""
        stamp = self._mtime()
        if stamp is None:
            return {}
        if self._cached is not None and self._cached[0] == stamp:
            return self._cached[1]
        try:
            records = json.loads(self.records_path.read_text())
        except ValueError as err:
            raise ValueError(
                f"tuning database {self.records_path} is not valid JSON: {err}") from err
        self._cached = (stamp, records)
        return records

    def lookup(self, target: str, workload: str) -> Optional[dict]:
        """The stored best record, or None."""
        try:
            return self.records().get(target, {}).get(workload)
        except ValueError:
            return None

    def store(self, target: str, workload: str, record: dict) -> bool:
        """Keep ``record`` if it is faster than what is stored; True if it was written."""
        records = {t: dict(w) for t, w in self.records().items()}
        old = records.get(target, {}).get(workload)
        if old is not None and old.get("ms", float("inf")) <= record["ms"]:
            return False
        records.setdefault(target, {})[workload] = record
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".records.", suffix=".json")
        with os.fdopen(fd, "w") as handle:
            json.dump(records, handle, indent=1, sort_keys=True)
        os.replace(tmp, self.records_path)
        global _writes
        _writes += 1
        return True


_db_override: Optional[TuningDatabase] = None


_default_db: Optional[TuningDatabase] = None


def active_db() -> TuningDatabase:
    """The database kernel builds consult (the default dir unless ``use_db`` changed it)."""
    global _default_db
    if _db_override is not None:
        return _db_override
    root = default_db_dir()
    if _default_db is None or (_default_db.root is not root and _default_db.root != root):
        _default_db = TuningDatabase()
    return _default_db


def use_db(root: Optional[Path]) -> None:
    """Point kernel builds at another database directory (None: back to the default)."""
    global _db_override
    _db_override = TuningDatabase(root) if root is not None else None
