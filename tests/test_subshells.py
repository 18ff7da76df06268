"""Widget clicks on llm_magic's kernel subshell: in a real kernel, and the routing's parts.

The kernel tests speak the Jupyter protocol the way a front end does: they send
a widget's comm message while a cell runs, with no subshell named (JupyterLab
with ``commsOverSubshells`` disabled) and with a subshell of the front end's
own (its default), and read what comes back on IOPub.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ipywidgets
import pytest

from llm_magic.widgets import _subshell
from llm_magic.widgets._subshell import ENV, missing, route

jupyter_client = pytest.importorskip("jupyter_client")

TIMEOUT = 120
WORKERS = ("[t.name for t in __import__('threading').enumerate() "
           "if t.name.startswith('llm_magic-') and t.name != 'llm_magic-monitor']")
SUBSHELLS = ("[t.name for t in __import__('threading').enumerate() "
             "if t.name.startswith('subshell-')]")


# --------------------------------------------------------------------------- a kernel


class Kernel:
    """A kernel of this virtual environment, and the IOPub messages read from it so far."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.km = jupyter_client.KernelManager(kernel_name="python3")
        self.km.start_kernel(env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path),
                                  **(env or {})})
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=TIMEOUT)
        self.seen: list[tuple[float, dict[str, Any]]] = []

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)

    def read(self, until: Any, timeout: float = TIMEOUT,
             after: dict[str, Any] | None = None) -> dict[str, Any]:
        """The first message (read already, or read now) for which ``until(msg)`` is true.

        With ``after``, only messages that came after that one count.
        """
        seen = [m for _, m in self.seen]
        start = next(i for i, m in enumerate(seen) if m is after) + 1 if after else 0
        for msg in seen[start:]:
            if until(msg):
                return msg
        deadline = time.monotonic() + timeout
        while True:
            msg = self.kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            self.seen.append((time.perf_counter(), msg))
            if until(msg):
                return msg

    def execute(self, code: str) -> str:
        return self.kc.execute(code)  # type: ignore[no-any-return]

    def done(self, msg_id: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """Wait for the idle status of request ``msg_id`` on IOPub and return its shell reply."""
        self.read(lambda m: _parent(m) == msg_id and _state(m) == "idle", timeout)
        while True:
            reply = self.kc.get_shell_msg(timeout=timeout)
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply  # type: ignore[no-any-return]

    def run(self, code: str) -> list[dict[str, Any]]:
        msg_id = self.execute(code)
        reply = self.done(msg_id)
        msgs = [m for _, m in self.seen if _parent(m) == msg_id]
        errors = [m["content"] for m in msgs if m["msg_type"] == "error"]
        assert reply["content"]["status"] == "ok", errors
        return msgs

    def value(self, expression: str) -> str:
        msgs = self.run(f"print({expression})")
        return "".join(m["content"]["text"] for m in msgs if m["msg_type"] == "stream").strip()

    def click(self, comm_id: str, content: dict[str, Any], subshell_id: str | None = None) -> str:
        """A custom message from a view in the page, as ipywidgets sends it."""
        msg = self.kc.session.msg("comm_msg", {"comm_id": comm_id, "data": {
            "method": "custom", "content": content}})
        if subshell_id is not None:
            msg["header"]["subshell_id"] = subshell_id
        self.kc.shell_channel.send(msg)
        return msg["header"]["msg_id"]  # type: ignore[no-any-return]

    def create_subshell(self) -> str:
        """A subshell of the front end's own, as JupyterLab makes one per comm target."""
        msg = self.kc.session.msg("create_subshell_request", {})
        self.kc.control_channel.send(msg)
        while True:
            reply = self.kc.get_control_msg(timeout=TIMEOUT)
            if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                return reply["content"]["subshell_id"]  # type: ignore[no-any-return]


def _parent(msg: dict[str, Any]) -> str | None:
    return msg["parent_header"].get("msg_id")  # type: ignore[no-any-return]


def _state(msg: dict[str, Any]) -> str | None:
    return msg["content"].get("execution_state") if msg["msg_type"] == "status" else None


def _models_view(kernel: Kernel, msg_id: str) -> tuple[str, dict[str, Any]]:
    """The comm id and state of the models table that the request ``msg_id`` opened."""
    for _, m in kernel.seen:
        if m["msg_type"] == "comm_open" and _parent(m) == msg_id:
            state = dict(m["content"]["data"].get("state", {}))
            if "models" in state and "wait_note" in state:
                comm_id = m["content"]["comm_id"]
                for _, u in kernel.seen:
                    if (u["msg_type"] == "comm_msg" and _parent(u) == msg_id
                            and u["content"]["comm_id"] == comm_id):
                        state.update(u["content"]["data"].get("state", {}))
                return comm_id, state
    raise AssertionError("the panel opened no models view")


def _update(comm_id: str, parent: str, key: str) -> Any:
    """A test for the update of ``key`` that the view ``comm_id`` sent answering ``parent``."""
    def test(m: dict[str, Any]) -> bool:
        return (m["msg_type"] == "comm_msg" and _parent(m) == parent
                and m["content"]["comm_id"] == comm_id
                and key in m["content"]["data"].get("state", {}))
    return test


@pytest.fixture(scope="module")
def long_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from _models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("subshell-model"), arch="gpt2",
                            context=8192, seed=0, n_embd=64)


@pytest.fixture
def kernel() -> Iterator[Kernel]:
    k = Kernel()
    try:
        yield k
    finally:
        k.close()


@pytest.mark.serial
def test_clicks_act_while_a_cell_generates_and_the_kernel_stays_busy(kernel, long_model):
    kernel.run("%load_ext llm_magic")
    kernel.run(f"import llm_magic as lm\nlm.load({str(long_model)!r}, name='long')\n"
               "lm.load('demo')\nimport time\n_ends = []\nlm.get_manager().events.subscribe("
               "lambda e: _ends.append(time.time()), kinds=('generation_end',))")
    shown = kernel.execute("p = lm.panel()\ndisplay(p)")
    kernel.done(shown)
    view, state = _models_view(kernel, shown)
    assert state["wait_note"] == ""
    cell = kernel.execute("%%llm long -n 6000 --no-chat\nHello")
    kernel.read(lambda m: _parent(m) == cell and m["msg_type"] == "update_display_data",
                timeout=60)

    # No subshell named, as with commsOverSubshells disabled.
    sent = time.perf_counter()
    click = kernel.click(view, {"action": "unload", "name": "demo"})
    rows = kernel.read(lambda m: _update(view, click, "models")(m) and "demo" not in [
        row["name"] for row in m["content"]["data"]["state"]["models"]], timeout=10)
    acted = time.perf_counter() - sent
    assert [row["name"] for row in rows["content"]["data"]["state"]["models"]] == ["long"]
    notice = kernel.read(_update(view, click, "notice"), timeout=30)
    assert "Unloaded 'demo'" in notice["content"]["data"]["state"]["notice"]
    assert not any(_parent(m) == cell and _state(m) == "idle" for _, m in kernel.seen)
    # The click's idle is followed by the cell's busy: the page goes on showing it busy.
    idle = kernel.read(lambda m: _parent(m) == click and _state(m) == "idle", timeout=10)
    status = kernel.read(lambda m: m["msg_type"] == "status", after=idle, timeout=10)
    assert _state(status) == "busy" and _parent(status) == cell

    # A subshell of the front end's own named, as with its default (one per comm target).
    theirs = kernel.create_subshell()
    click = kernel.click(view, {"action": "unload", "name": "long"}, subshell_id=theirs)
    refused = kernel.read(_update(view, click, "error"), timeout=10)
    assert refused["content"]["data"]["state"]["error"] == (
        "Model 'long' is generating. Stop that generation first, then unload.")
    assert not any(_parent(m) == cell and _state(m) == "idle" for _, m in kernel.seen)

    # An interrupt stops the cell in time; a click sent with it is not lost.
    interrupted = time.time()
    kernel.km.interrupt_kernel()
    click = kernel.click(view, {"action": "pin", "name": "long", "pinned": True})
    error = kernel.read(lambda m: _parent(m) == cell and m["msg_type"] == "error")
    assert error["content"]["ename"] == "KeyboardInterrupt"
    shown = error["header"]["date"].timestamp() - interrupted  # the kernel's clock is this host's
    pinned = kernel.read(_update(view, click, "models"), timeout=10)
    assert [m["pinned"] for m in pinned["content"]["data"]["state"]["models"]] == [True]
    assert kernel.done(cell)["content"]["ename"] == "KeyboardInterrupt"
    assert kernel.value(WORKERS) == "[]"
    assert len(eval(kernel.value(SUBSHELLS))) == 2  # llm_magic's one, and the front end's
    assert kernel.value("_llm.stats.stop_reason") == "interrupted"
    stopped = float(kernel.value("_ends[-1]")) - interrupted
    assert stopped < 0.5, f"the generation stopped {stopped:.2f} s after the interrupt"
    print(f"unload acted {acted * 1000:.0f} ms after the click, during the cell; the interrupt "
          f"stopped the generation in {stopped * 1000:.0f} ms, its error shown after "
          f"{shown * 1000:.0f} ms")


def test_without_subshells_clicks_wait_for_the_cell_and_the_panel_says_so():
    kernel = Kernel(env={ENV: "off"})
    try:
        kernel.run("import llm_magic as lm\nlm.load('demo')")
        shown = kernel.execute("p = lm.panel()\ndisplay(p)")
        kernel.done(shown)
        view, state = _models_view(kernel, shown)
        assert state["wait_note"] == ("Clicks here wait for the running cell: widget subshells "
                                      f"are turned off ({ENV}=off).")
        cell = kernel.execute("import time\ntime.sleep(3)")
        kernel.read(lambda m: _parent(m) == cell and _state(m) == "busy")
        click = kernel.click(view, {"action": "pin", "name": "demo", "pinned": True})
        kernel.read(_update(view, click, "models"), timeout=30)
        order = [(m["msg_type"], _parent(m)) for _, m in kernel.seen]
        assert order.index(("status", cell)) < len(order)
        ends = [i for i, (_, m) in enumerate(kernel.seen) if _parent(m) == cell and
                _state(m) == "idle"]
        pinned = [i for i, (_, m) in enumerate(kernel.seen) if _parent(m) == click and
                  m["msg_type"] == "comm_msg"]
        assert ends and pinned and ends[0] < pinned[0], "the click acted before the cell ended"
        assert kernel.value(SUBSHELLS) == "[]"
    finally:
        kernel.close()


# --------------------------------------------------------------------------- the parts


class _FakeChannel:
    """ipykernel's shell channel thread, as far as the router uses it."""

    def __init__(self) -> None:
        self.parent_thread = threading.current_thread()
        self._manager = self
        self.manager = self
        self.io_loop = self

    def add_callback(self, fn: Any) -> None:
        threading.Thread(target=fn, name="shell-channel").start()

    def _create_subshell(self) -> str:
        return "abc"


class _FakeKernel:
    _supports_kernel_subshells = True

    def __init__(self) -> None:
        self.shell_channel_thread = _FakeChannel()
        self.sent: list[tuple[str, Any]] = []
        self.parent: Any = {"header": {"msg_id": "cell"}}

    def _publish_status(self, status: str, channel: str, parent: Any = None) -> None:
        self.sent.append((status, (parent or self.parent)["header"]["msg_id"]))

    def get_parent(self, channel: str = "shell") -> Any:
        return self.parent


class _Comm:
    def _reply_subshell_for(self, data: Any, default: Any) -> Any:
        return default


def test_missing_names_what_is_missing(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    kernel = _FakeKernel()
    assert missing(kernel, _Comm()) is None
    assert missing(object(), _Comm()) == "this kernel has no subshells (they need ipykernel 7.4 " \
        "or later)"
    assert "cannot route widget messages" in missing(kernel, object())
    monkeypatch.setenv(ENV, "off")
    assert missing(kernel, _Comm()) == f"widget subshells are turned off ({ENV}=off)"


def test_the_router_routes_comms_and_sends_the_main_shell_busy_after_its_idle():
    kernel = _FakeKernel()
    router = _subshell.Router(kernel)
    comm = _Comm()
    router.route(comm)
    assert comm._reply_subshell_for({"method": "custom"}, None) == "abc"
    assert comm._reply_subshell_for({}, "front-end-subshell") == "abc"
    kernel._publish_status("busy", "shell")  # the main shell starts a cell
    assert router.main_busy

    def click() -> None:
        kernel._publish_status("busy", "shell", {"header": {"msg_id": "click"}})
        kernel._publish_status("idle", "shell", {"header": {"msg_id": "click"}})

    threading.Thread(target=click, name=router.thread_name).start()
    deadline = time.monotonic() + 10
    while len(kernel.sent) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert kernel.sent == [("busy", "cell"), ("busy", "click"), ("idle", "click"),
                           ("busy", "cell")]
    kernel._publish_status("idle", "shell")  # the cell ends
    threading.Thread(target=click, name=router.thread_name).start()
    deadline = time.monotonic() + 10
    while len(kernel.sent) < 7 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert kernel.sent[4:] == [("idle", "cell"), ("busy", "click"), ("idle", "click")]


def test_route_walks_the_whole_widget_tree(monkeypatch):
    kernel = _FakeKernel()
    router = _subshell.Router(kernel)
    monkeypatch.setattr(_subshell, "_get", lambda: (router, ""))
    monkeypatch.setattr(_subshell, "missing", lambda kernel, comm=None: None)
    button, text = ipywidgets.Button(), ipywidgets.Text()
    box = ipywidgets.VBox([ipywidgets.HBox([button]), text])
    assert route(box) == ""
    for widget in (box, box.children[0], button, text, button.layout, button.style, text.style):
        assert widget.comm._reply_subshell_for({}, None) == "abc"
    for widget in (box, box.children[0], button, text):
        widget.close()


def test_outside_a_kernel_nothing_is_routed_and_nothing_is_said():
    assert route(ipywidgets.Button()) == ""
    assert _subshell.router() is None


# --------------------------------------------------------------------------- handlers on threads


def _click(widget: Any, **content: Any) -> None:
    """A custom message from the page, as the comm delivers it (here: on a test's thread)."""
    widget._handle_msg({"content": {"data": {"method": "custom", "content": content}},
                        "buffers": []})


def test_clicks_from_many_threads_change_the_view_under_its_lock(manager, tiny_gpt2, capsys):
    from llm_magic.resources.sampler import Sampler
    from llm_magic.widgets.models import ModelsView

    manager.load(str(tiny_gpt2), name="a")
    manager.load(str(tiny_gpt2), name="b", dtype="float32", reload=True)
    sampler = Sampler(interval=0.05)
    view = ModelsView(manager=manager, sampler=sampler)
    capsys.readouterr()  # what loading printed
    try:
        clicks = [threading.Thread(target=_click, args=(view,),
                                   kwargs={"action": "pin", "name": "a", "pinned": i % 2 == 0})
                  for i in range(40)]
        clicks.append(threading.Thread(target=_click, args=(view,),
                                       kwargs={"action": "unload", "name": "b"}))
        for c in clicks:
            c.start()
        for c in clicks:
            c.join()
        assert [row["name"] for row in view.models] == ["a"]
        assert view.models[0]["pinned"] == manager.info("a").pinned
        assert view.error == "" and view.notice.startswith("Unloaded 'b'")
        _click(view, action="unload", name="gone")
        assert view.error.startswith("Model 'gone' is not loaded") and "\n" not in view.error
    finally:
        view.close()
        sampler.close()
    assert capsys.readouterr() == ("", "")  # nothing printed from a handler


def test_unload_of_the_generating_model_refuses_in_one_line_and_it_finishes(manager, tiny_gpt2):
    from llm_magic.generation import generate
    from llm_magic.widgets.models import ModelsView

    manager.load(str(tiny_gpt2), name="a")
    view = ModelsView(manager=manager)
    started, result = threading.Event(), {}

    def stream(_piece: str) -> None:
        started.set()
        time.sleep(0.01)

    def run() -> None:
        result["gen"] = generate("Hello", model="a", max_new_tokens=60, stream=stream,
                                 manager=manager)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        assert started.wait(60)
        _click(view, action="unload", name="a")
        assert view.error == "Model 'a' is generating. Stop that generation first, then unload."
    finally:
        worker.join()
        view.close()
    assert result["gen"].stats.new_tokens == 60 and manager.is_loaded("a")


def test_unload_and_generation_racing_never_use_a_dropped_model(manager, tiny_gpt2):
    from llm_magic.errors import LLMMagicError
    from llm_magic.generation import generate

    surprises: list[BaseException] = []
    for _ in range(5):
        manager.load(str(tiny_gpt2), name="a", reload=True)
        go = threading.Barrier(2)

        def gen(go: threading.Barrier = go) -> None:
            go.wait()
            try:
                generate("Hello", model="a", max_new_tokens=2, manager=manager)
            except LLMMagicError:
                pass  # unloaded first: "not loaded"
            except BaseException as exc:  # a closed backend, a missing attribute...
                surprises.append(exc)

        def unload(go: threading.Barrier = go) -> None:
            go.wait()
            try:
                manager.unload("a")
            except LLMMagicError:
                pass  # generating first: refused

        threads = [threading.Thread(target=gen), threading.Thread(target=unload)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert surprises == []


def test_playground_generate_and_stop_from_other_threads(manager, long_model):
    from llm_magic.widgets.playground import Playground

    manager.load(str(long_model), name="a")
    p = Playground(manager=manager)
    try:
        p.prompt.value = "Hello"
        p.max_new_tokens.value = 6000
        clicks = [threading.Thread(target=p.generate_button.click) for _ in range(5)]
        for c in clicks:
            c.start()
        for c in clicks:
            c.join()
        assert p.running
        assert p.output.error in ("", "A generation is already running here; Stop it first.")
        threading.Thread(target=p.stop_button.click).start()
        deadline = time.monotonic() + 30
        while p.running and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not p.running and p.output.state == "stopped"
        assert p.last is not None and p.last.interrupted
        assert p.wait_note.value == ""  # outside a kernel there is nothing to say
    finally:
        p.close()


def test_head_requests_from_two_threads_leave_the_head_that_is_chosen(manager, tiny_gpt2):
    import numpy as np

    from llm_magic.analysis.attention import attention

    amap = attention("The import statement loads a module.", model=str(tiny_gpt2),
                     manager=manager)
    view = amap.widget()
    layers, heads, t, _ = amap.shape

    def choose(offset: int) -> None:
        for i in range(60):
            with view.hold_trait_notifications():
                view.layer, view.head = (i + offset) % layers, (i * 7 + offset) % heads

    threads = [threading.Thread(target=choose, args=(k,)) for k in range(2)]
    for c in threads:
        c.start()
    for c in threads:
        c.join()
    # Each request reads the choice under the view's lock: the last one sent is the chosen head.
    assert view.data_key == f"{view.layer}:{view.head}"
    assert np.array_equal(np.frombuffer(view.data, "<f2").reshape(t, t),
                          amap.layers[view.layer][view.head])
    view.close()


def test_a_standalone_playground_says_once_that_clicks_wait(monkeypatch, manager):
    from llm_magic.widgets.panel import Panel
    from llm_magic.widgets.playground import Playground

    monkeypatch.setattr(_subshell, "_get", lambda: (None, "this kernel has no subshells"))
    alone = Playground(manager=manager)
    panel = Panel(manager=manager)
    try:
        note = "Clicks here wait for the running cell: this kernel has no subshells."
        assert alone.wait_note.value == note and alone.wait_note.layout.display == ""
        assert panel.models.view.wait_note == note
        assert panel.playground.wait_note.layout.display == "none"  # the models view says it
    finally:
        alone.close()
        panel.close()
