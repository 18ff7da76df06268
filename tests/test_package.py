"""Package-level promises: cheap import, public names, the error family."""

from __future__ import annotations

import os
import subprocess
import sys

import llm_magic as lm
from llm_magic import errors

HEAVY = ("torch", "transformers", "pynvml", "anywidget")


def _imported_after(code: str) -> list[str]:
    probe = f"{code}\nimport sys\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    # Without the warm-up thread of %load_ext (tests/test_magics.py checks the calling
    # thread with it): nothing heavy in sys.modules at all.
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={**os.environ, "LLM_MAGIC_WARM_UP": "0"})
    return [m for m in out.stdout.strip().split(",") if m]


def test_import_is_cheap():
    assert _imported_after("import llm_magic, llm_magic.manager, llm_magic.generation") == []


def test_load_ext_is_cheap():
    code = (
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "InteractiveShell.instance().run_line_magic('load_ext', 'llm_magic')"
    )
    assert _imported_after(code) == []


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
