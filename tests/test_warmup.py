"""The warm-up of %load_ext: heavy imports on a background thread; processes and kernels."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from _kernels import collect, reply_to
from IPython.core.interactiveshell import InteractiveShell

from llm_magic import backends
from llm_magic.backends import _warm_up
from llm_magic.magics._warm_up import WaitForWarmUp

jupyter_client = pytest.importorskip("jupyter_client")

TIMEOUT = 120

# Records which thread first imports torch or transformers, then loads the extension.
SPY = textwrap.dedent("""
    import os, sys, threading
    imported_by = {}
    class Spy:
        def find_spec(self, name, path=None, target=None):
            if name in ("torch", "transformers") and name not in sys.modules:
                imported_by.setdefault(name, threading.current_thread().name)
            return None
    sys.meta_path.insert(0, Spy())
    from IPython.core.interactiveshell import InteractiveShell
    ip = InteractiveShell.instance()
""")


def _python(code: str, **env: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Warning" not in done.stderr, done.stderr
    return done.stdout.split()


# -- in a fresh interpreter ----------------------------------------------------


def test_load_ext_leaves_the_imports_to_the_warm_up_thread():
    out = _python(SPY + textwrap.dedent("""
        ip.run_line_magic("load_ext", "llm_magic")
        from llm_magic.backends import _warm_up
        import llm_magic as lm
        assert _warm_up.wait(timeout=300)
        import torch
        print(imported_by.get("torch"), imported_by.get("transformers"),
              torch.cuda.is_initialized(), lm.get_manager().names() == [],
              "transformers.models.gpt2.modeling_gpt2" in sys.modules)
    """), LLM_MAGIC_WARM_UP="1")
    assert out == ["llm_magic-warm-up", "llm_magic-warm-up", "False", "True", "True"]


def test_load_ext_in_a_cell_starts_the_warm_up_when_the_cell_ends():
    out = _python(SPY + textwrap.dedent("""
        from llm_magic.backends import _warm_up
        ip.run_cell("%load_ext llm_magic\\n"
                    "from transformers import GPT2Config\\n"
                    "during = __import__('llm_magic.backends._warm_up').backends"
                    "._warm_up.started()")
        print(ip.user_ns["during"], _warm_up.started(), imported_by["transformers"])
    """), LLM_MAGIC_WARM_UP="1")
    assert out == ["False", "True", "MainThread"]


@pytest.mark.parametrize("how", ["environment", "config"])
def test_the_warm_up_can_be_turned_off(how):
    off = ("" if how == "environment"
           else "ip.run_line_magic('config', 'LLMMagics.warm_up = False')\n")
    out = _python(SPY + off + textwrap.dedent("""
        ip.run_line_magic("load_ext", "llm_magic")
        import time; time.sleep(0.5)
        import threading
        print(sorted(m for m in ("torch", "transformers") if m in sys.modules),
              [t.name for t in threading.enumerate() if t.name == "llm_magic-warm-up"])
    """), LLM_MAGIC_WARM_UP="0" if how == "environment" else "1")
    assert out == ["[]", "[]"]


def test_without_torch_the_warm_up_ends_quietly():
    """A kernel for served models only: no torch, no message, and the magics work."""
    out = _python(textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # import torch raises ImportError
        from IPython.core.interactiveshell import InteractiveShell
        ip = InteractiveShell.instance()
        ip.run_line_magic("load_ext", "llm_magic")
        from llm_magic.backends import _warm_up
        assert _warm_up.wait(timeout=60)
        ok = ip.run_cell("%llm list").success
        print("transformers" in sys.modules, ok)
    """), LLM_MAGIC_WARM_UP="1")
    assert out[-2:] == ["False", "True"]


def test_the_thread_count_is_the_same_with_and_without_the_warm_up():
    """What lm.threads() says before the first load, and what that load then applies."""
    code = textwrap.dedent("""
        from IPython.core.interactiveshell import InteractiveShell
        ip = InteractiveShell.instance()
        ip.run_line_magic("load_ext", "llm_magic")
        import llm_magic as lm
        from llm_magic.resources import cpu as _threads
        from llm_magic.backends import _warm_up
        assert _warm_up.wait(timeout=300)
        before = lm.threads()
        _threads.apply_default_threads()  # as the first load does
        import torch
        print(before, lm.threads(), torch.get_num_threads())
    """)
    assert _python(code, LLM_MAGIC_WARM_UP="1") == _python(code, LLM_MAGIC_WARM_UP="0")


# -- in this process: the waits -----------------------------------------------


@pytest.fixture
def slow_warm_up(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """A stand-in warm-up thread that ends when the test sets the event."""
    release = threading.Event()
    thread = threading.Thread(target=release.wait, args=(30,), name="llm_magic-warm-up")
    monkeypatch.setattr(_warm_up, "_thread", thread)
    thread.start()
    yield release
    release.set()
    thread.join()


def test_a_load_waits_for_the_warm_up_of_its_backend(slow_warm_up, monkeypatch):
    monkeypatch.setattr(backends, "_warmed", {backends._BACKENDS.target("demo")})
    got: list[Any] = []
    caller = threading.Thread(target=lambda: got.append(backends.backend_class("demo")))
    caller.start()
    caller.join(0.3)
    assert caller.is_alive() and not got  # still waiting
    slow_warm_up.set()
    caller.join(10)
    assert got and got[0].kind == "hf"
    assert backends.backend_class("url").kind == "openai"  # never waited


def test_cells_wait_only_while_the_warm_up_runs(slow_warm_up):
    transformer = WaitForWarmUp()

    def waits(cell: str) -> bool:
        return "wait_for_warm_up" in ast.unparse(transformer.visit(ast.parse(cell)))

    assert waits("import torch") and waits("x = 1") and waits("")
    slow_warm_up.set()
    _warm_up._thread.join()
    assert not waits("import torch")


def test_a_waiting_cell_runs_after_the_warm_up(slow_warm_up):
    shell = InteractiveShell.instance()
    shell.ast_transformers.append(WaitForWarmUp())
    try:
        threading.Timer(0.2, slow_warm_up.set).start()
        result = shell.run_cell("_alive = __import__('threading').enumerate()")
        assert result.success
        assert not any(t.name == "llm_magic-warm-up" for t in shell.user_ns.pop("_alive"))
    finally:
        shell.ast_transformers[:] = [t for t in shell.ast_transformers
                                     if not isinstance(t, WaitForWarmUp)]


def test_the_switch_reads_the_environment(monkeypatch):
    for value, on in (("0", False), ("off", False), ("False", False), ("1", True), ("", True)):
        monkeypatch.setenv("LLM_MAGIC_WARM_UP", value)
        assert _warm_up.enabled() is on
    monkeypatch.setenv("LLM_MAGIC_WARM_UP", "0")
    assert backends.warm_up("demo") is False


# -- in a real kernel -----------------------------------------------------------


class Kernel:
    """A fresh kernel of this environment; ``run`` returns (status, text of the outputs)."""

    def __init__(self) -> None:
        self.km = jupyter_client.KernelManager(kernel_name="python3")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "LLM_MAGIC_WARM_UP": "1",
               "HF_HUB_OFFLINE": "1"}
        self.km.start_kernel(env=env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=TIMEOUT)

    def send(self, code: str) -> str:
        return self.kc.execute(code)  # type: ignore[no-any-return]

    def result(self, msg_id: str) -> tuple[str, str]:
        texts = []
        for _, msg in collect(self.kc, msg_id, TIMEOUT):
            content = msg["content"]
            if msg["msg_type"] == "stream":
                texts.append(content["text"])
            elif msg["msg_type"] == "error":
                texts += [content["ename"], *content["traceback"]]
            elif msg["msg_type"] in ("display_data", "execute_result"):
                texts.append(content["data"].get("text/plain", ""))
        return reply_to(self.kc, msg_id, TIMEOUT)["content"]["status"], "".join(texts).strip()

    def run(self, code: str) -> tuple[str, str]:
        return self.result(self.send(code))

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture
def kernel() -> Iterator[Kernel]:
    k = Kernel()
    try:
        yield k
    finally:
        k.close()


WARMING = "_warming = __import__('llm_magic.backends', fromlist=['_']).warming()"
# Imports named in the cell, one made as a library does it, and a name that
# transformers resolves lazily: each would race the warm-up thread if they overlapped.
CHECK = (WARMING + "\nimport importlib, torch, transformers\n"
         "from transformers import GPT2Config, GPT2LMHeadModel\n"
         "gpt2 = importlib.import_module('transformers.models.gpt2.modeling_gpt2')\n"
         "print(_warming, torch.ones(3).sum().item(), gpt2.GPT2LMHeadModel is GPT2LMHeadModel)")
LLM = "%%llm demo -n 5 --no-stream\nThe import statement"


@pytest.mark.slow
def test_cells_sent_with_load_ext_run_after_the_warm_up(kernel):
    """As Run All does: the next cells start during the warm-up, wait for it, and work."""
    load = kernel.send("%load_ext llm_magic")
    first = kernel.send(CHECK)
    llm = kernel.send(LLM)
    assert kernel.result(load) == ("ok", "")
    status, text = kernel.result(first)
    assert (status, text.split()) == ("ok", ["False", "3.0", "True"]), text
    status, text = kernel.result(llm)
    assert status == "ok" and text, text
    assert kernel.run("print(__import__('llm_magic.backends._warm_up').backends._warm_up"
                      ".started())") == ("ok", "True")


@pytest.mark.slow
def test_an_interrupt_during_the_warm_up_leaves_the_kernel_usable(kernel):
    assert kernel.run("%load_ext llm_magic") == ("ok", "")
    kernel.km.interrupt_kernel()  # while idle
    first = kernel.send("import torch\nprint('imported')")
    time.sleep(0.3)
    kernel.km.interrupt_kernel()  # while the cell waits for the warm-up
    status, text = kernel.result(first)
    assert status == "error" and "KeyboardInterrupt" in text and "wait_for_warm_up" in text, text
    status, text = kernel.run(CHECK)
    assert (status, text.split()) == ("ok", ["False", "3.0", "True"]), text
    status, text = kernel.run(LLM)
    assert status == "ok" and text, text
