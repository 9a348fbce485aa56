"""Style lint: no line of Python source over ``MAX_COLUMNS`` columns (issue 20, point 4).

Covers the package, the benchmarks, the tests and ``setup.py``. Runs in ``make test``; pure
Python, well under a second.
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_COLUMNS = 100
CHECKED = ("binattn", "benchmarks", "tests")

#: TEMPORARY allow-list: files (or folders, ending in "/") another engineer is rewriting right
#: now (the options object of issue 20, point 1); they get wrapped in that rewrite. Remove an
#: entry once its files are within MAX_COLUMNS, and remove this list when it is empty.
ALLOWED_LONG_LINES = (
    "binattn/ops/",
    "binattn/tvm_kernels/cuda_dispatch.py",
    "binattn/tvm_kernels/cpu_dispatch.py",
    "binattn/export/bitops.py",
    "binattn/binarize_pass/site.py",
    "binattn/binarize_pass/config.py",
    "binattn/train/config.py",
    "binattn/hw_targets/sites.py",
)


def _sources() -> list[Path]:
    files = [ROOT / "setup.py"]
    for folder in CHECKED:
        files += sorted((ROOT / folder).rglob("*.py"))
    return [f for f in files if f.is_file()]


def _allowed(rel: str) -> bool:
    return any(rel.startswith(entry) if entry.endswith("/") else rel == entry
               for entry in ALLOWED_LONG_LINES)


def test_no_line_over_100_columns():
    long_lines = []
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        if _allowed(rel):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if len(line) > MAX_COLUMNS:
                long_lines.append(f"{rel}:{number}: {len(line)} columns")
    assert not long_lines, (f"lines over {MAX_COLUMNS} columns (wrap them):\n"
                            + "\n".join(long_lines))


def test_the_allow_list_names_existing_paths():
    """A stale entry (a file moved or deleted) would silently exempt nothing; drop it."""
    missing = [entry for entry in ALLOWED_LONG_LINES if not (ROOT / entry).exists()]
    assert not missing, f"ALLOWED_LONG_LINES names paths that are gone: {missing}"
