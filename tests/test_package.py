"""Package-level promises: cheap import, public names, the error family."""

from __future__ import annotations

import os
import subprocess
import sys

import llm_magic as lm
from llm_magic import errors

HEAVY = ("torch", "transformers", "pynvml", "anywidget")


def _run(code: str) -> str:
    # Without the warm-up thread of %load_ext (tests/test_magics.py checks the calling
    # thread with it): nothing heavy in sys.modules at all.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "LLM_MAGIC_WARM_UP": "0"})
    return out.stdout.strip()


def _imported_after(code: str, names: tuple[str, ...] = HEAVY) -> list[str]:
    found = _run(f"{code}\nimport sys\nprint(','.join(m for m in {names!r} if m in sys.modules))")
    return [m for m in found.split(",") if m]


LOAD_EXT = ("from IPython.core.interactiveshell import InteractiveShell\n"
            "InteractiveShell.instance().run_line_magic('load_ext', 'llm_magic')")


def test_import_is_cheap():
    assert _imported_after("import llm_magic, llm_magic.manager, llm_magic.generation") == []


def test_load_ext_is_cheap():
    assert _imported_after(LOAD_EXT) == []


def test_load_ext_leaves_the_api_for_the_first_cell():
    """The facade and the magics import the API on first use; history listens from the start."""
    api = ("llm_magic.generation", "llm_magic.manager", "llm_magic.analysis",
           "llm_magic.resources", "llm_magic.resources", "llm_magic.history")
    assert _imported_after(LOAD_EXT, api) == ["llm_magic.history"]
    # a Generation needs the manager, and the manager the resources; not the analyses
    assert _imported_after("import llm_magic as lm\nlm.Generation", api) == [
        m for m in api if m != "llm_magic.analysis"]


def test_every_public_name_resolves_and_is_listed():
    fresh = _run("import llm_magic as lm\n"
                 "print(all(hasattr(lm, n) for n in lm.__all__), set(lm.__all__) <= set(dir(lm)))")
    assert fresh == "True True"
    assert lm.generate is __import__("llm_magic.generation").generation.generate


def test_submodules_of_the_same_name_leave_the_functions_in_place():
    """``lm.attention``, ``lm.history`` and ``lm.monitor`` are functions, whichever modules
    of those names are imported first (``llm_magic.attention`` and ``llm_magic.monitor``, the
    former paths, are gone: ``llm_magic.analysis.attention``, ``llm_magic.resources``)."""
    code = ("from llm_magic.analysis.attention import AttentionMap\n"
            "from llm_magic.resources.sampler import get_sampler\n"
            "import llm_magic.history, llm_magic as lm, sys, types\n"
            "from llm_magic.analysis import attention\n"
            "history = sys.modules['llm_magic.history'].history\n"
            "print(lm.attention is attention, lm.history is history,\n"
            "      isinstance(lm.monitor, types.FunctionType))")
    assert _run(code) == "True True True"


def test_public_api_is_documented():
    for name in lm.__all__:
        obj = getattr(lm, name)
        if callable(obj):
            assert obj.__doc__, name


def test_every_error_is_an_llm_magic_error():
    for name in errors.__all__:
        cls = getattr(errors, name)
        if name != "LLMMagicWarning":
            assert issubclass(cls, errors.LLMMagicError), name
    assert str(errors.ModelNotLoadedError("plain message")) == "plain message"
