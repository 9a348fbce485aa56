"""docs/DESIGN.md names only modules and files that exist.

Checked: every path named (``binattn/…``, ``tests/…``, ``docs/…``, ``benchmarks/…`` exactly,
relative to the repository; a shorter ``cpu/build.py`` or ``options.py`` must be the end of some
file's path), every entry of the module map under its package, and every dotted ``binattn.x.y``
name: the longest prefix that is a module must exist and the rest must be an attribute of it.
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DESIGN = REPO / "docs" / "DESIGN.md"
TEXT = DESIGN.read_text()

PATH_RE = re.compile(r"(?<![\w./<>-])((?:binattn|tests|docs|benchmarks)/[\w./-]*\w"
                     r"|[\w-]+(?:/[\w-]+)*\.(?:py|md|json))(?![\w/])")
DOTTED_RE = re.compile(r"(?<![\w./])binattn(?:\.[A-Za-z_]\w*)+")


FILES = [p.relative_to(REPO).as_posix()
         for top in ("binattn", "tests", "docs", "benchmarks") for p in (REPO / top).rglob("*")]


EXTERNAL = {"fuse_attention.py"}  # inductor's, named as the model of the matchers


def _exists(rel: str) -> bool:
    rel = rel.rstrip("/")
    if rel in EXTERNAL or (REPO / rel).exists():
        return True
    if rel.split("/")[0] in ("binattn", "tests", "docs", "benchmarks"):
        return (REPO / rel).exists()
    return any(f == rel or f.endswith("/" + rel) for f in FILES)


def _paths() -> list[str]:
    found = set()
    for match in PATH_RE.finditer(TEXT):
        path = match.group(1)
        if "*" in path or path.startswith("lab/"):  # globs; lab/ is named as absent on purpose
            continue
        found.add(path)
    return sorted(found)


def _module_tree_paths() -> list[str]:
    """``cpu/kernels.py``-style entries of the module map, resolved under their package."""
    block = TEXT[TEXT.index("## Module map"):]
    block = block[block.index("```") + 3:]
    block = block[:block.index("```")]
    found, package = [], ""
    for line in block.splitlines():
        m = re.match(r"  (\w+)/\s", line)
        if m:
            package = m.group(1)
        m = re.match(r"    ([\w/]+\.(?:py|json))\s", line)
        if m and package:
            found.append(f"binattn/{package}/{m.group(1)}")
    return found


@pytest.mark.parametrize("path", _paths() + _module_tree_paths())
def test_named_path_exists(path):
    assert _exists(path), f"docs/DESIGN.md names {path}, which does not exist"


@pytest.mark.parametrize("name", sorted(set(DOTTED_RE.findall(TEXT))))
def test_named_module_exists(name):
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        rel = Path(*parts[:cut])
        if (REPO / rel).with_suffix(".py").exists() or (REPO / rel / "__init__.py").exists():
            break
    else:
        pytest.fail(f"docs/DESIGN.md names {name}: no such module")
    if cut < len(parts):
        obj = importlib.import_module(".".join(parts[:cut]))
        for attr in parts[cut:]:
            assert hasattr(obj, attr), f"docs/DESIGN.md names {name}: no {attr!r}"
            obj = getattr(obj, attr)


def test_the_checker_sees_the_module_map():
    assert "binattn/tvm_kernels/cuda/build.py" in _module_tree_paths()
    assert "binattn/ops/options.py" in _paths()
