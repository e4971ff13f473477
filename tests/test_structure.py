"""The shape of the code: what the architecture promises, checked.

* ``protocol`` is sans-IO: no sockets, threads, event loops, logging or device
  frameworks (it can be read and tested without any of them);
* modules, functions and classes stay small enough to live in (the limits of
  the project's style guide);
* no module reaches back up the chain (socket -> protocol -> sink -> documents).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ophyd_xspress"
MODULES = sorted(SRC.rglob("*.py"))

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 300

#: What the sans-IO core must never import.
IO_MODULES = {
    "asyncio",
    "bluesky",
    "h5py",
    "logging",
    "ophyd_async",
    "socket",
    "tango",
    "threading",
    "zmq",
}

#: Which packages each layer may import from this project (one way through the
#: house; ``_constants`` and ``_schema`` are facts every layer reads).
ALLOWED = {
    "protocol": {"protocol", "_constants", "_schema"},
    "transport": {"protocol", "transport", "_constants"},
    "hdf5": {"protocol", "transport", "hdf5", "_constants", "_schema"},
    "device": {"protocol", "transport", "hdf5", "device", "_constants", "_schema"},
    "sim": {"protocol", "sim", "_constants", "_lazy"},
    "tools": {"protocol", "transport", "tools", "_constants"},
    "maps": {"protocol", "sim", "maps", "_constants", "_schema", "_lazy"},
    "dranspose": {"protocol", "maps", "dranspose", "_constants", "_lazy"},
}


def _name(path: Path) -> str:
    return str(path.relative_to(SRC))


def _imports(tree: ast.AST, package: str) -> set[str]:
    """Top-level names of every module ``tree`` imports (relative imports
    resolved against the subpackage ``package`` of ophyd_xspress)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.add(f"ophyd_xspress.{package}")
            elif node.level == 2:
                target = (node.module or "").split(".")[0]
                found.add(f"ophyd_xspress.{target}")
    return found


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_module_size(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{_name(path)}: {lines} lines"


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_function_and_class_sizes(path: Path) -> None:
    tree = ast.parse(path.read_text())
    too_long = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            limit = (
                MAX_CLASS_LINES
                if isinstance(node, ast.ClassDef)
                else MAX_FUNCTION_LINES
            )
            if size > limit:
                too_long.append(f"{node.name}: {size} lines (limit {limit})")
    assert not too_long, f"{_name(path)}: {too_long}"


@pytest.mark.parametrize("path", sorted((SRC / "protocol").glob("*.py")), ids=_name)
def test_protocol_is_sans_io(path: Path) -> None:
    imported = _imports(ast.parse(path.read_text()), "protocol")
    assert not imported & IO_MODULES, f"{_name(path)} imports {imported & IO_MODULES}"


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layers_import_only_down_the_chain(layer: str) -> None:
    wrong = {}
    for path in sorted((SRC / layer).rglob("*.py")):
        imported = _imports(ast.parse(path.read_text()), layer)
        ours = {
            name.split(".", 1)[1]
            for name in imported
            if name.startswith("ophyd_xspress.")
        }
        bad = ours - ALLOWED[layer]
        if bad:
            wrong[_name(path)] = sorted(bad)
    assert not wrong, wrong
