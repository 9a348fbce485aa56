"""One-way layers: every import inside binattn (module level and inside functions, parsed with
``ast``) goes from a higher layer to a lower one or stays inside its own package; no cycles
between the subpackages.

``LAYERS`` is the one declaration of the order, lowest first. Data flows capture → pass → ops
→ kernels → export / hw_targets; imports follow dependencies: the op contract (``ops``) is
the bottom every layer builds on, the kernels register with it and are found by it at run time
by module *name* (``ops/dispatch.py``'s ``PROVIDERS``), never by import. Packages in one tier
are peers and must not import each other. docs/DESIGN.md explains the layers.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "binattn"

#: lowest first; a module may import its own package and the packages of lower tiers only.
#: "binattn" is the package's ``__init__`` (the public facade), on top.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("_version", "_files", "errors"),       # leaves: no binattn imports
    ("ops",),                               # the op contract: options, schema, reference, dispatch
    ("schedules",),                         # kernel knobs and tuned databases (data, no kernels)
    ("tvm_kernels",),                       # TVM kernels, their build, dispatch, tuning, benches
    ("binarize_pass",),                     # capture → match → rewrite to the op
    ("model_inputs", "models"),
    ("model_io", "train"),
    ("hw_targets",),                        # cost model and descriptor of the ASIC target
    ("export",),                            # ONNX / MLIR / .pt2 exports
    ("backend", "dropins"),
    ("hf", "diffusers", "demo", "bench"),
    ("cli",),
    ("__main__", "binattn"),
)
TIER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _unit(module: str) -> str:
    """The layer unit of a dotted module: its top-level subpackage or module under binattn."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "binattn"


def _resolve(target: str) -> str:
    """The longest prefix of ``target`` that is a binattn module (``pkg.name`` may be a function
    imported from a package's ``__init__``)."""
    while target not in MODULES and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def imports() -> list[tuple[str, str, int]]:
    """(importing module, imported binattn module, line) for every import statement."""
    found = []
    for module, path in MODULES.items():
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                if target == "binattn" or target.startswith("binattn."):
                    found.append((module, _resolve(target), node.lineno))
    return found


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for src, dst, _ in imports():
        a, b = _unit(src), _unit(dst)
        if a != b:
            graph.setdefault(a, set()).add(b)
    return graph


def test_every_package_has_a_layer():
    units = {_unit(m) for m in MODULES}
    assert units <= set(TIER), f"declare these in LAYERS: {sorted(units - set(TIER))}"


def test_no_import_goes_against_the_layer_order():
    bad = [f"{src}:{line} imports {dst} ({_unit(src)} is not above {_unit(dst)})"
           for src, dst, line in imports()
           if _unit(src) != _unit(dst) and TIER.get(_unit(src), -1) <= TIER.get(_unit(dst), -1)]
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_cycle_between_packages():
    cycle = _cycle(package_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
    ({"a": {"b"}, "b": {"c"}}, None),
])
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert _cycle(graph) == expected
