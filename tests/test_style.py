"""Style lint: no line of Python source over ``MAX_COLUMNS`` columns (issue 20, point 4).

Covers the package, the benchmarks, the tests and ``setup.py``. Runs in ``make test``; pure
Python, well under a second.
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_COLUMNS = 100
CHECKED = ("binattn", "benchmarks", "tests")


def _sources() -> list[Path]:
    files = [ROOT / "setup.py"]
    for folder in CHECKED:
        files += sorted((ROOT / folder).rglob("*.py"))
    return [f for f in files if f.is_file()]


def test_no_line_over_100_columns():
    long_lines = []
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if len(line) > MAX_COLUMNS:
                long_lines.append(f"{rel}:{number}: {len(line)} columns")
    assert not long_lines, (f"lines over {MAX_COLUMNS} columns (wrap them):\n"
                            + "\n".join(long_lines))
