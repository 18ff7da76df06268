"""%%llm in a real Jupyter kernel: display updates while streaming, and a kernel interrupt."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _kernels import collect, reply_to

jupyter_client = pytest.importorskip("jupyter_client")

TIMEOUT = 120
WORKERS = ("[t.name for t in __import__('threading').enumerate() "
           "if t.name.startswith('llm_magic-') and t.name != 'llm_magic-monitor']")


@pytest.fixture(scope="module")
def long_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small GPT-2 with a long context whose greedy output from "Hello" never ends early."""
    from _models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("kernel-model"), arch="gpt2",
                            context=8192, seed=0, n_embd=64)


@pytest.fixture(scope="module")
def kernel(long_model: Path) -> Iterator[tuple[Any, Any]]:
    """A kernel of this virtual environment with llm_magic loaded and the model resident."""
    km = jupyter_client.KernelManager(kernel_name="python3")
    # "python" in the kernel spec means this interpreter: jupyter_client puts sys.executable there.
    assert km.kernel_spec.argv[:3] == ["python", "-m", "ipykernel_launcher"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    km.start_kernel(env=env)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=TIMEOUT)
        run(kc, "%load_ext llm_magic")
        run(kc, f"%llm load {long_model} --as long")
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def run(kc: Any, code: str) -> list[dict[str, Any]]:
    """Execute ``code``; fail the test with the kernel's traceback if it fails."""
    msg_id = kc.execute(code)
    msgs = [m for _, m in collect(kc, msg_id)]
    reply = reply_to(kc, msg_id)
    errors = [m["content"] for m in msgs if m["msg_type"] == "error"]
    assert reply["content"]["status"] == "ok", errors
    return msgs


def value(kc: Any, expression: str) -> str:
    """The printed value of ``expression`` in the kernel."""
    msgs = run(kc, f"print({expression})")
    return "".join(m["content"]["text"] for m in msgs if m["msg_type"] == "stream").strip()


def displays(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in msgs if m["msg_type"] in ("display_data", "update_display_data")]


def test_streaming_arrives_as_display_updates(kernel):
    _, kc = kernel
    msgs = run(kc, "%%llm -n 1500 --no-chat\nHello")
    shown = displays(msgs)
    assert shown[0]["msg_type"] == "display_data"
    updates = shown[1:]
    assert len(updates) >= 3 and all(m["msg_type"] == "update_display_data" for m in updates)
    display_id = shown[0]["content"]["transient"]["display_id"]
    assert all(m["content"]["transient"]["display_id"] == display_id for m in updates)
    texts = [m["content"]["data"]["text/plain"] for m in shown]
    final = value(kc, "repr(_llm.text)")
    assert repr(texts[-1]) == final
    assert all(eval(final).startswith(t) for t in texts)  # each update extends the last
    assert not [m for m in msgs if m["msg_type"] == "execute_result"]  # Out stays empty
    assert value(kc, WORKERS) == "[]"


def test_printed_text_and_the_stream_stay_in_order(kernel):
    _, kc = kernel
    msgs = run(kc, "print('before')\n"
                   "get_ipython().run_cell_magic('llm', '-n 1500 --no-chat', 'Hello')\n"
                   "print('after')")
    order = [m["content"]["text"].strip() if m["msg_type"] == "stream" else m["msg_type"]
             for m in msgs if m["msg_type"] in ("stream", "display_data", "update_display_data")]
    assert order[0] == "before" and order[1] == "display_data" and order[-1] == "after"
    assert set(order[2:-1]) == {"update_display_data"}


def test_display_hooks_see_every_streamed_update(kernel):
    """A registered display hook (as output-capturing tools use) gets every update."""
    _, kc = kernel
    run(kc, "_seen = []\n"
            "def _hook(msg):\n"
            "    _seen.append(msg['header']['msg_type'])\n"
            "    return msg\n"
            "get_ipython().display_pub.register_hook(_hook)")
    try:
        msgs = run(kc, "%%llm -n 1500 --no-chat\nHello")
        sent = [m["msg_type"] for m in displays(msgs)]
        assert len(sent) >= 3 and value(kc, "_seen") == repr(sent)
    finally:
        run(kc, "get_ipython().display_pub.unregister_hook(_hook)")


@pytest.mark.serial
def test_interrupt_stops_generation_keeps_text_and_the_kernel_goes_on(kernel):
    km, kc = kernel
    msg_id = kc.execute("%%llm -n 6000 --no-chat\nHello")
    msgs: list[tuple[float, dict[str, Any]]] = []
    deadline = time.monotonic() + TIMEOUT
    while not any(m["msg_type"] == "update_display_data" for _, m in msgs):
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") == msg_id:
            msgs.append((time.perf_counter(), msg))
    time.sleep(1.0)
    interrupted = time.perf_counter()
    km.interrupt_kernel()
    msgs += collect(kc, msg_id)
    reply = reply_to(kc, msg_id)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    error_at = next(t for t, m in msgs if m["msg_type"] == "error")
    assert error_at - interrupted < 1.0, f"stopped {error_at - interrupted:.2f} s after interrupt"
    shown = displays([m for _, m in msgs])
    partial = shown[-1]["content"]["data"]["text/plain"]
    assert partial and repr(partial) == value(kc, "repr(_llm.text)")
    assert value(kc, "_llm.stats.stop_reason") == "interrupted"
    assert 0 < int(value(kc, "_llm.stats.new_tokens")) < 6000
    assert value(kc, WORKERS) == "[]"
    after = run(kc, "%%llm -n 3 --no-chat\nHello")
    assert displays(after) and value(kc, "_llm.stats.new_tokens") == "3"


@pytest.mark.serial
def test_a_conversation_turn_interrupted_in_the_kernel_is_kept_and_the_next_is_exact(kernel):
    km, kc = kernel
    run(kc, "%%llm long -c -n 3 --no-stream\nHello")
    msg_id = kc.execute("%%llm -c -n 6000\nAgain")
    deadline = time.monotonic() + TIMEOUT
    while True:
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") == msg_id and \
                msg["msg_type"] == "update_display_data":
            break
    time.sleep(0.5)
    km.interrupt_kernel()
    collect(kc, msg_id)
    assert reply_to(kc, msg_id)["content"]["ename"] == "KeyboardInterrupt"
    from_kernel = value(kc, "[len(c.turns), c.turns[-1].interrupted, "
                            "c.messages[-1].get('interrupted')] "
                            "if (c := __import__('llm_magic').generation.conversation.find()) "
                            "else None")
    assert from_kernel == "[2, True, True]"
    run(kc, "%%llm -c -n 8 --no-stream --logprobs 1\nAnd now?")
    check = ("import torch\n"
             "_m = __import__('llm_magic').get_manager().backend('long').model\n"
             "_ids = torch.tensor([list(_llm.prompt_ids)])\n"
             "_ref = _m.generate(input_ids=_ids, attention_mask=torch.ones_like(_ids), "
             "do_sample=False, max_new_tokens=8, min_new_tokens=8)[0, _ids.shape[1]:].tolist()\n"
             "print([r.id for r in _llm.tokens] == _ref, _llm.stats.reused_tokens > 0)")
    msgs = run(kc, check)
    assert "".join(m["content"]["text"] for m in msgs if m["msg_type"] == "stream").strip() \
        == "True True"


def test_a_cell_translates_with_the_demo_translator_in_the_kernel(kernel):
    _, kc = kernel
    msgs = run(kc, "%%llm demo-translator -n 16 --attention --logprobs 2\nSunday, the seventh of "
                   "July, 1963")
    assert displays(msgs)
    assert value(kc, "_llm.text") == "1963-07-07"
    assert value(kc, "type(_llm.attention).__name__") == "Seq2SeqAttention"
    assert value(kc, "__import__('llm_magic').models()[0].kind") == "seq2seq"
    run(kc, "%llm unload demo-translator")
