"""The layers of DESIGN.md and the absence of import circles, checked by import-linter.

The contracts live in pyproject.toml (``[tool.importlinter]``); these tests run
them through import-linter's own Python API, check that every module of the
package sits in a layer, and check that the contracts catch a violation.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import grimp
import pytest
import tomllib

import llm_magic

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
PACKAGE = Path(llm_magic.__file__).parent
FACE = ("llm_magic.magics", "llm_magic.widgets")


def _contracts() -> dict[str, dict]:
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def _lint(config: Path, cwd: Path, pythonpath: Path | None = None) -> tuple[bool, str]:
    """Run every contract of ``config`` in a fresh interpreter; (all kept, report)."""
    code = textwrap.dedent(f"""
        import sys
        import importlinter.api  # noqa: F401 - sets up import-linter's readers and builders
        from importlinter.application.use_cases import lint_imports
        sys.exit(0 if lint_imports({str(config)!r}, cache_dir=None, no_logo=True) else 1)
    """)
    env = None
    if pythonpath is not None:
        import os

        env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    return done.returncode == 0, done.stdout + done.stderr


def test_the_contracts_hold():
    kept, report = _lint(PYPROJECT, ROOT)
    assert kept, report
    assert "3 kept, 0 broken" in report, report


def test_every_module_sits_in_a_layer():
    layers = _contracts()["layers"]["layers"]
    named = {tail.strip().strip("()") for layer in layers for tail in layer.split(":")}
    graph = grimp.build_graph("llm_magic", exclude_type_checking_imports=True, cache_dir=None)
    top = {m.split(".")[1] for m in graph.modules if m.count(".") >= 1}
    missing = sorted(top - named)
    assert not missing, (
        f"Modules outside every layer: {missing}. Add each to its layer in pyproject.toml "
        "([tool.importlinter] 'layers'): plain helpers import nothing of llm_magic above them."
    )


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.find_modules_directly_imported_by(node):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_module_imports_itself_back():
    """No circle in the whole module graph, type-only imports included. (A package's face
    importing its own modules is not a circle: none of them imports the face back.)"""
    graph = grimp.build_graph("llm_magic", exclude_type_checking_imports=False, cache_dir=None)
    graph.remove_module("llm_magic")  # the facade imports everything lazily, by design
    assert _cycles(graph) == []


def test_only_the_notebook_face_imports_the_package_facade():
    """The facade imports the API (history at once, the rest on first use); an API or
    backend module importing it would be a circle."""
    graph = grimp.build_graph("llm_magic", exclude_type_checking_imports=True, cache_dir=None)
    importers = sorted(m for m in graph.find_modules_that_directly_import("llm_magic")
                       if not m.startswith(FACE))
    assert importers == [], importers
    assert graph.find_modules_directly_imported_by("llm_magic") >= {"llm_magic.history",
                                                                     "llm_magic.manager"}


def test_importing_the_api_loads_no_backend():
    code = ("import sys, llm_magic, llm_magic.manager, llm_magic.generation, "
            "llm_magic.resources, llm_magic.backends\n"
            "print(sorted(m for m in sys.modules if m.startswith('llm_magic.backends.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "['llm_magic.backends.base']", out


CIRCLES = "No import circles between packages or between the modules of one package BROKEN"


@pytest.mark.parametrize(("module", "line", "broken"), [
    ("backends/base.py", "from ..manager import get_manager", "nothing imports upward BROKEN"),
    ("manager/core.py", "from ..backends import hf", "never imported by name BROKEN"),
    # a circle between two packages (and an upward import)
    ("common/sizes.py", "from ..resources.placement import Placement", CIRCLES),
    # a circle between two modules of one package, in the same layer
    ("resources/sysmem.py", "from .cpu import threads", CIRCLES),
    # a type-only circle counts too
    ("analysis/_lens_pictures.py", "if TYPE_CHECKING:\n    from .lens import LensMap", CIRCLES),
])
def test_a_violation_breaks_a_contract(tmp_path, module, line, broken):
    """A copy of the package with one bad import fails the contracts that forbid it."""
    copy = tmp_path / "src"
    shutil.copytree(PACKAGE, copy / "llm_magic",
                    ignore=shutil.ignore_patterns("__pycache__", "*.safetensors", "model"))
    target = copy / "llm_magic" / module
    source = target.read_text()
    head, sep, rest = source.partition("from __future__ import annotations\n")
    target.write_text(head + sep + line + "  # noqa\n" + rest)
    shutil.copy(PYPROJECT, tmp_path / "pyproject.toml")
    kept, report = _lint(tmp_path / "pyproject.toml", tmp_path, pythonpath=copy)
    assert not kept, report
    assert broken in report, report
