"""The front-end modules: one copy of the shared helpers, in front of every view's own code.

anywidget takes one ES module per view, so ``widgets/static/_shared.js`` is put in
front of each view's file (``widgets._common.esm``). A helper copied back into a
view would be a second copy to keep in step (or, at the top level, a syntax
error that leaves the view blank): these tests fail on both.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import shutil
import subprocess
from pathlib import Path

import anywidget
import pytest

import llm_magic.widgets as widgets
from llm_magic.widgets._common import SHARED_ESM, STATIC, esm

SHARED = STATIC / SHARED_ESM
VIEWS = sorted(p for p in STATIC.glob("*.js") if p != SHARED)
# A name a file defines: a function, or a const, let or var (at any depth).
DEFINED = re.compile(r"\bfunction\s+([A-Za-z_$][\w$]*)|\b(?:const|let|var)\s+([A-Za-z_$][\w$]*)")


def defined(text: str) -> set[str]:
    return {a or b for a, b in DEFINED.findall(text)}


def top_level(text: str) -> set[str]:
    """The names a file declares at its top level (lines that start a declaration)."""
    return set(re.findall(r"^(?:function|const|let|var)\s+([A-Za-z_$][\w$]*)", text, re.M))


def view_classes() -> list[type[anywidget.AnyWidget]]:
    """Every anywidget view of the package, found in the modules of ``llm_magic.widgets``."""
    found = []
    for info in pkgutil.walk_packages(widgets.__path__, f"{widgets.__name__}."):
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if (issubclass(cls, anywidget.AnyWidget) and cls.__module__ == module.__name__
                    and "_esm" in cls.__dict__):
                found.append(cls)
    return sorted(found, key=lambda c: c.__name__)


def test_the_shared_helpers_are_defined_in_no_view_file() -> None:
    shared = top_level(SHARED.read_text())
    assert {"node", "setText", "listen", "halves", "int32s", "bytesOf", "visible", "percent",
            "PALETTE", "canvasContext", "cellUnder"} <= shared, shared
    copies = {view.name: sorted(shared & defined(view.read_text())) for view in VIEWS}
    assert not any(copies.values()), f"defined again in a view: {copies}"


def test_each_view_module_is_the_shared_helpers_once_then_its_own_file() -> None:
    shared = SHARED.read_text()
    names = top_level(shared)
    classes = view_classes()
    assert len(classes) >= 7, classes  # attention, lens, tokens, compare, models, monitor, stream
    used = set()
    for cls in classes:
        text = cls._esm
        assert isinstance(text, str), cls
        own = [view for view in VIEWS if text.endswith(view.read_text())]
        assert len(own) == 1, (cls, own)
        used.add(own[0])
        assert text.count(shared.strip()) == 1, cls
        for name in names:  # each declared once: another copy would be a syntax error
            declared = re.findall(rf"^(?:function|const|let|var)\s+{re.escape(name)}\b", text,
                                  re.M)
            assert len(declared) == 1, (cls, name)
        assert text.count("export default") == 1, cls
    assert used == set(VIEWS), f"view modules no class loads: {set(VIEWS) - used}"


def test_the_shared_file_is_plain_script_that_ships_and_escapes() -> None:
    text = SHARED.read_text()
    assert not re.search(r"^\s*(import|export)\b", text, re.M)  # it is prepended, not imported
    assert not re.search(r"\.(inner|outer)HTML|insertAdjacentHTML|document\.write", text)
    assert "://" not in text  # nothing from a CDN


@pytest.mark.skipif(shutil.which("node") is None, reason="no node on this machine")
@pytest.mark.parametrize("view", [p.name for p in VIEWS])
def test_each_composed_module_parses(view: str, tmp_path: Path) -> None:
    path = tmp_path / view.replace(".js", ".mjs")
    path.write_text(esm(view))
    run = subprocess.run(["node", "--check", str(path)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode == 0, run.stderr
