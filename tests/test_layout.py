"""The package's layering (docs/design.md, "Layers"), read from the imports themselves: every
``import`` in nmt/, function-level ones included, points down; no import cycle; every error derives
from NmtError; no function longer than 100 lines."""
import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import nmt
from nmt.errors import NmtError

NMT = Path(nmt.__file__).parent

# room -> layer; a module may import its own room and lower layers only (docs/design.md)
LAYERS = {"errors": 0,
          "files": 1, "metrics": 1,
          "text": 2, "cpu": 2,
          "model": 3,
          "weights": 4,
          "data": 5,
          "decode": 6,
          "train": 7,
          "__init__": 8}          # nmt/__init__.py: the public API, imported lazily


def module_name(path: Path) -> str:
    parts = path.relative_to(NMT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported_names(source: str, where: str = "<source>") -> set[str]:
    """Every module a source text imports, at any depth (functions, TYPE_CHECKING blocks), and for
    ``from A import b`` also ``A.b`` (b may be a module: ``from nmt.text import wordpiece``)."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{where}:{node.lineno}: relative import; write nmt.X"
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def graph() -> dict[str, set[str]]:
    """nmt module -> the nmt modules (and tools, entry points, tests) it imports."""
    known = {module_name(p) for p in NMT.rglob("*.py")}
    outside = ("tools", "train", "translate", "tests")
    return {module_name(p): {m for m in imported_names(p.read_text(encoding="utf-8"), str(p))
                             if m in known or m.split(".")[0] in outside}
            for p in NMT.rglob("*.py")}


def test_rooms_are_the_ones_the_design_names():
    rooms = {room(module_name(p)) for p in NMT.rglob("*.py")}
    assert rooms == set(LAYERS), f"rooms {sorted(rooms ^ set(LAYERS))} are new or gone: update docs/design.md and LAYERS"


def test_imports_point_down():
    bad = []
    for module, imported in graph().items():
        for target in imported:
            if target.split(".")[0] != "nmt":
                bad.append(f"{module} imports {target} (nmt/ never imports the tools, entry points or tests)")
            elif room(target) != room(module) and LAYERS[room(target)] >= LAYERS[room(module)]:
                bad.append(f"{module} (layer {LAYERS[room(module)]}) imports {target} (layer {LAYERS[room(target)]})")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if t == m or t not in edges:
                continue
            if state.get(t) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_the_checker_sees_function_level_and_submodule_imports():
    source = "import torch\ndef f():\n    if True:\n        from nmt.train.trainer import setup\nfrom nmt.text import bpe\n"
    assert imported_names(source) >= {"torch", "nmt.train.trainer", "nmt.text", "nmt.text.bpe"}
    assert "nmt.text.vocab" in graph()["nmt.data.binarized"]


def all_modules():
    return [importlib.import_module(m.name) for m in pkgutil.walk_packages(nmt.__path__, "nmt.")]


def test_every_error_derives_from_nmt_error():
    errors = {cls for mod in all_modules() for _, cls in inspect.getmembers(mod, inspect.isclass)
              if issubclass(cls, Exception) and cls.__module__.startswith("nmt.")}
    assert errors and all(issubclass(cls, NmtError) for cls in errors), \
        [c.__qualname__ for c in errors if not issubclass(c, NmtError)]
    assert issubclass(NmtError, ValueError)       # callers that caught ValueError keep working


def test_no_function_over_100_lines():
    long = []
    for path in NMT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 100:
                long.append(f"{path.relative_to(NMT.parent)}:{node.lineno} {node.name}: "
                            f"{node.end_lineno - node.lineno + 1} lines")
    assert not long, "\n".join(long)
