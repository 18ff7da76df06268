"""Served models through the OpenAI-compatible API, against real servers on 127.0.0.1.

``served_demo`` is a real ``transformers serve`` of the demo model (one per
session). :class:`Loopback` is a small HTTP server of this file that answers
like an OpenAI-compatible server and can fail on purpose: a 500, a stream
dropped in the middle, a stream that stalls, a slow answer, a key check.
"""

from __future__ import annotations

import _thread
import http.server
import json
import logging
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import llm_magic as lm
from llm_magic.errors import (
    BudgetExceededError,
    InvalidOptionError,
    LLMMagicWarning,
    NotAvailableError,
    PromptTooLongError,
    ServerError,
)
from llm_magic.generation import generate
from llm_magic.manager import room as resources

PROMPTS = ("The import statement", "A list comprehension", "The with statement")
SECRET = "sk-test-9f8e7d6c5b4a-SECRET"


def _workers() -> list[str]:
    return [t.name for t in threading.enumerate()
            if t.name.startswith("llm_magic-") and t.name != "llm_magic-monitor"]


# -- a loopback server that fails on purpose ----------------------------------


class Loopback(http.server.ThreadingHTTPServer):
    """An OpenAI-compatible server of one model, ``tiny``, whose answers the test chooses.

    ``mode``: "ok" streams ``pieces``; "500" answers an error; "drop" sends two
    pieces and closes the connection; "stall" sends two pieces and waits (at most
    20 s) for ``release``; "slow" waits that long before answering the model
    list. ``key`` makes every request need ``Authorization: Bearer KEY``.
    ``max_model_len`` makes it answer like vLLM: the model list gives the context,
    ``/tokenize`` counts a prompt's words (``tokenize=False``: no such endpoint),
    and a request that asks for more than fits is refused with a 400.
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode = "ok"
        self.key: str | None = None
        self.pieces = ["Hello", ",", " world", "!"]
        self.max_model_len: int | None = None
        self.tokenize = True
        #: Prompt tokens the usage says came from the server's prefix cache (None: not said).
        self.cached: int | None = None
        self.requests: list[dict[str, Any]] = []
        self.headers_seen: list[dict[str, str]] = []
        self.release = threading.Event()
        self.stalling = threading.Event()
        self.thread = threading.Thread(target=self.serve_forever, name="loopback", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Loopback
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _json(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        self.server.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
        if self.server.key and self.headers.get("Authorization") != f"Bearer {self.server.key}":
            self._json(401, {"error": {"message": "Invalid API key."}})
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if not self._authorised():
            return
        if self.server.mode == "slow":
            self.server.release.wait(20)
        model: dict[str, Any] = {"id": "tiny", "object": "model"}
        if self.server.max_model_len is not None:
            model["max_model_len"] = self.server.max_model_len
        self._json(200, {"object": "list", "data": [model]})

    @staticmethod
    def _count(body: dict[str, Any]) -> int:
        """This server's tokens: the prompt's words (a chat: its messages' words)."""
        if "messages" in body:
            return sum(len(m["content"].split()) for m in body["messages"])
        return len(body["prompt"].split())

    def _too_long(self, body: dict[str, Any]) -> bool:
        """Answer a request past the context as vLLM does (400); True if it was one."""
        limit = self.server.max_model_len
        if limit is None:
            return False
        if self.path == "/tokenize":
            if self.server.tokenize:
                self._json(200, {"count": self._count(body), "max_model_len": limit,
                                 "tokens": list(range(self._count(body)))})
            else:
                self._json(404, {"detail": "Not Found"})
            return True
        prompt, asked = self._count(body), body.get("max_tokens") or 16
        if prompt + asked <= limit:
            return False
        self._json(400, {"object": "error", "message": (
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{prompt + asked} tokens ({prompt} in the messages, {asked} in the completion)."),
            "type": "BadRequestError", "code": 400})
        return True

    def _event(self, text: str, finish: str | None = None) -> None:
        if self.path.endswith("/chat/completions"):
            choice = {"index": 0, "delta": {"role": "assistant", "content": text},
                      "finish_reason": finish}
            chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0,
                     "model": "tiny", "choices": [choice]}
        else:
            chunk = {"id": "x", "object": "text_completion", "created": 0, "model": "tiny",
                     "choices": [{"index": 0, "text": text, "finish_reason": finish}]}
        self._send(f"data: {json.dumps(chunk)}\n\n".encode())

    def _send(self, data: bytes) -> None:
        """One piece of a chunked body, as uvicorn and vLLM send their streams."""
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        if not self._authorised():
            return
        if self._too_long(body):
            return
        mode = self.server.mode
        if mode == "500":
            self._json(500, {"detail": "boom: the engine crashed"})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if mode == "ok":
            for piece in self.server.pieces:
                self._event(piece)
            self._event("", "length")
            usage = {"id": "x", "object": "text_completion", "created": 0, "model": "tiny",
                     "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 4,
                                              "total_tokens": 11}}
            if self.server.cached is not None:
                usage["usage"]["prompt_tokens_details"] = {"cached_tokens": self.server.cached}
            self._send(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
            self._send(b"")
            return
        self._event("Hello")
        self._event(", wor")
        if mode == "drop":
            self.connection.shutdown(2)  # the server goes away mid-stream
            return
        self.server.stalling.set()
        self.server.release.wait(20)
        self.server.stalling.clear()
        self.close_connection = True


@pytest.fixture
def loopback() -> Iterator[Loopback]:
    server = Loopback()
    server.thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


# -- loading ------------------------------------------------------------------------


def test_load_checks_the_server_and_registers_the_model(manager, served_demo):
    handle = manager.load(served_demo.url, name="served", model=served_demo.model)
    info = handle.info
    assert (info.backend, info.endpoint, info.architecture) == (
        "openai", served_demo.url, served_demo.model)
    assert info.memory == 0 and info.device == "server"
    assert repr(handle) == f"<model 'served': {served_demo.model} served at {served_demo.url}>"
    table = str(manager.models())
    assert served_demo.url in table and "none here" in table
    # The same load again returns the registered model; without model= the only one is used.
    assert manager.load(served_demo.url, name="served", model=served_demo.model) == handle
    assert manager.load(served_demo.url, name="again").info.architecture == served_demo.model


def test_an_unknown_model_id_fails_at_load_and_registers_nothing(manager, served_demo):
    with pytest.raises(ServerError, match="'nope' is not served at") as err:
        manager.load(served_demo.url, name="x", model="nope")
    assert served_demo.model in str(err.value) and "\n" not in str(err.value)
    assert manager.names() == []


def test_a_refused_port_is_one_clear_line(manager):
    from _serve import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ServerError, match="Cannot reach the model server") as err:
        manager.load(url, name="x", model="m")
    assert "connection refused" in str(err.value) and "\n" not in str(err.value)
    assert manager.names() == []


def test_a_server_that_does_not_answer_times_out(manager, loopback, monkeypatch):
    monkeypatch.setenv("LLM_MAGIC_SERVER_TIMEOUT", "0.5")
    loopback.mode = "slow"
    with pytest.raises(ServerError, match=r"did not answer within 0.5 s"):
        manager.load(loopback.url, name="x", model="tiny")
    assert manager.names() == []


def test_options_that_do_not_apply_to_a_served_model(manager, loopback, tiny_gpt2):
    with pytest.raises(InvalidOptionError, match="runs on its server"):
        manager.load(loopback.url, name="x", device="cuda")
    with pytest.raises(InvalidOptionError, match="runs on its server"):
        manager.load(loopback.url, name="x", dtype="bfloat16")
    with pytest.raises(InvalidOptionError, match="is a served model"):
        manager.load(loopback.url, name="x", revision="main")
    with pytest.raises(InvalidOptionError, match="apply to a model served at a URL"):
        manager.load(str(tiny_gpt2), name="x", model="tiny")
    with pytest.raises(InvalidOptionError, match="credentials in the URL"):
        manager.load(loopback.url.replace("http://", "http://me:pw@"), name="x")
    assert manager.names() == []


# -- generation ---------------------------------------------------------------------


def test_served_greedy_equals_the_same_model_in_the_kernel(manager, served_demo):
    manager.load(served_demo.url, name="served", model=served_demo.model)
    manager.load("demo")
    for prompt in PROMPTS:
        pieces: list[str] = []
        served = lm.generate(prompt, model="served", max_new_tokens=48, manager=manager,
                             stream=pieces.append)
        local = lm.generate(prompt, model="demo", max_new_tokens=48, manager=manager)
        assert served.text == local.text, prompt
        assert served.stats.new_tokens == local.stats.new_tokens, prompt
        assert served.stats.prompt_tokens == local.stats.prompt_tokens, prompt
        assert "".join(pieces) == served.text and len(pieces) > 1
    stats = served.stats
    assert stats.time_to_first_token is not None and stats.tokens_per_second
    assert stats.stop_reason in ("length", "eos")


def test_stop_strings_and_system_preamble(manager, served_demo):
    manager.load(served_demo.url, name="served", model=served_demo.model)
    manager.load("demo")
    served = lm.generate(PROMPTS[0], model="served", max_new_tokens=40, stop=" name",
                         system="Python docs.", manager=manager)
    local = lm.generate(PROMPTS[0], model="demo", max_new_tokens=40, stop=" name",
                        system="Python docs.", manager=manager)
    assert served.text == local.text and "name" not in served.text
    assert served.stats.stop_reason == "stop"


def test_options_map_onto_the_api(manager, loopback):
    manager.load(loopback.url, name="lb")
    g = lm.generate("Hi", model="lb", max_new_tokens=9, temperature=0.7, top_p=0.9, top_k=5,
                    seed=3, stop=["\n\n", "END"], manager=manager)
    sent = loopback.requests[-1]
    assert sent["model"] == "tiny" and sent["prompt"] == "Hi" and sent["stream"] is True
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"], sent["top_k"],
            sent["seed"], sent["stop"]) == (9, 0.7, 0.9, 5, 3, ["\n\n", "END"])
    assert g.text == "Hello, world!" and (g.stats.prompt_tokens, g.stats.new_tokens) == (7, 4)
    assert lm.generate("Hi", model="lb", chat=True, system="Be brief.",
                       manager=manager).text == "Hello, world!"
    assert loopback.requests[-1]["messages"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert "prompt" not in loopback.requests[-1]


def test_an_interrupt_closes_the_stream_keeps_the_text_and_leaves_no_thread(
        manager, served_demo):
    manager.load(served_demo.url, name="served", model=served_demo.model)
    seen: list[str] = []

    def interrupt_after_first(piece: str) -> None:
        seen.append(piece)
        if len(seen) == 1:
            threading.Timer(0.2, _thread.interrupt_main).start()

    with pytest.raises(KeyboardInterrupt):
        lm.generate(PROMPTS[0], model="served", max_new_tokens=250, manager=manager,
                    stream=interrupt_after_first)
    partial = manager.last_generation
    assert partial is not None and partial.interrupted and partial.text
    assert partial.stats.new_tokens < 250
    assert _workers() == []
    again = lm.generate(PROMPTS[0], model="served", max_new_tokens=5, manager=manager)
    assert again.stats.new_tokens == 5 and not manager.info("served").generating


def test_a_stop_event_closes_a_stalled_stream(manager, loopback):
    """The server stops sending; the stop event still ends the read at once."""
    manager.load(loopback.url, name="lb")
    loopback.mode = "stall"
    stop = threading.Event()
    shown: list[str] = []

    def press_stop_once_shown(piece: str) -> None:  # like a Stop button under the output
        shown.append(piece)
        if "".join(shown) == "Hello, wor" and loopback.stalling.wait(10):
            stop.set()

    g = lm.generate("Hi", model="lb", max_new_tokens=50, stop_event=stop, manager=manager,
                    stream=press_stop_once_shown)
    assert loopback.stalling.is_set()  # returned while the server was still holding the stream
    assert g.interrupted and g.text == "Hello, wor"
    assert _workers() == []


def test_a_server_error_is_one_line_and_the_model_stays(manager, loopback):
    manager.load(loopback.url, name="lb")
    loopback.mode = "500"
    with pytest.raises(ServerError) as err:
        lm.generate("Hi", model="lb", manager=manager)
    assert str(err.value) == (f"The model server at {loopback.url} answered 500: "
                              "boom: the engine crashed")
    loopback.mode = "ok"
    assert lm.generate("Hi", model="lb", manager=manager).text == "Hello, world!"


def test_a_stream_dropped_midway_keeps_the_partial_text(manager, loopback):
    manager.load(loopback.url, name="lb")
    loopback.mode = "drop"
    with pytest.raises(ServerError, match="broke the stream") as err:
        lm.generate("Hi", model="lb", manager=manager, stream=lambda s: None)
    assert "\n" not in str(err.value)
    assert manager.last_generation is not None
    assert manager.last_generation.text == "Hello, wor"
    assert _workers() == [] and manager.is_loaded("lb")


# -- the context ---------------------------------------------------------------------


def test_a_served_context_caps_the_request_as_in_the_kernel(manager, loopback):
    """Where the server gives its context (vLLM), new tokens stop there: reason length."""
    loopback.max_model_len = 16
    manager.load(loopback.url, name="lb")
    assert manager.info("lb").context_length == 16
    with pytest.warns(LLMMagicWarning, match="Only 13 new tokens fit after a 3-token prompt"):
        g = lm.generate("one two three", model="lb", max_new_tokens=4000, manager=manager)
    assert loopback.requests[-2] == {"model": "tiny", "prompt": "one two three"}  # /tokenize
    assert loopback.requests[-1]["max_tokens"] == 13
    assert g.text == "Hello, world!" and g.stats.stop_reason == "length"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default length fits quietly, as in the kernel
        lm.generate("one two three", model="lb", manager=manager)
    assert loopback.requests[-1]["max_tokens"] == 13
    lm.generate("one two", model="lb", max_new_tokens=5, chat=True, manager=manager)
    assert loopback.requests[-2]["messages"] == [{"role": "user", "content": "one two"}]
    assert loopback.requests[-1]["max_tokens"] == 5
    sent = len(loopback.requests)
    with pytest.raises(PromptTooLongError, match="The prompt is 16 tokens, but model 'lb' "
                                                 "reads at most 16"):
        lm.generate(" ".join(["word"] * 16), model="lb", manager=manager)
    assert len(loopback.requests) == sent + 1  # counted, never sent


def test_a_server_that_cannot_count_tokens_gets_the_request_as_asked(manager, loopback):
    loopback.max_model_len, loopback.tokenize = 16, False
    manager.load(loopback.url, name="lb")
    with pytest.raises(ServerError, match="answered 400: This model's maximum context length"):
        lm.generate("one two three", model="lb", max_new_tokens=4000, manager=manager)
    assert loopback.requests[-1]["max_tokens"] == 4000
    lm.generate("one two three", model="lb", max_new_tokens=5, manager=manager)
    assert [r.get("max_tokens") for r in loopback.requests] == [None, 4000, 5]  # asked once


def test_a_served_demo_past_its_context_keeps_the_text_and_says_why(manager, served_demo):
    """transformers serve gives no context and breaks the stream where the context ends."""
    manager.load(served_demo.url, name="served", model=served_demo.model)
    with pytest.raises(ServerError) as err:
        lm.generate("The import statement", model="served", max_new_tokens=4000,
                    manager=manager, stream=lambda piece: None)
    message = str(err.value)
    assert "\n" not in message and "context is probably full" in message, message
    assert "a 3-token prompt and " in message and "partial text is kept" in message, message
    partial = manager.last_generation
    assert partial is not None and partial.text
    new = int(message.split("a 3-token prompt and ")[1].split()[0])
    assert 200 < new < 256  # the demo reads 256 positions
    assert _workers() == [] and manager.is_loaded("served")
    assert lm.generate("The import statement", model="served", max_new_tokens=3,
                       manager=manager).stats.stop_reason == "length"


def test_attention_on_a_served_model_is_a_clear_error(manager, loopback):
    manager.load(loopback.url, name="lb")
    with pytest.raises(NotAvailableError, match="served at .*weights in this kernel"):
        lm.generate("Hi", model="lb", attention=True, manager=manager)
    assert loopback.requests == []


# -- keys -----------------------------------------------------------------------------


def test_the_key_comes_from_the_named_variable_and_is_never_shown(
        manager, loopback, monkeypatch, caplog):
    loopback.key = SECRET
    monkeypatch.setenv("LOOPBACK_KEY", SECRET)
    events: list[str] = []
    manager.events.subscribe(lambda e: events.append(repr(e)))
    with caplog.at_level(logging.DEBUG, logger="llm_magic"):
        handle = manager.load(loopback.url, name="lb", api_key_env="LOOPBACK_KEY")
        g = generate("Hi", model=handle.name, manager=manager)
    assert all(h.get("authorization") == f"Bearer {SECRET}" for h in loopback.headers_seen)
    backend = manager.backend("lb")
    shown = [repr(handle), str(manager.models()), manager.models()._repr_html_(),
             repr(manager.info("lb")), repr(backend.describe()), repr(g), repr(g.params),
             repr(vars(backend)), caplog.text, *events]
    assert not [s for s in shown if SECRET in s]
    assert "LOOPBACK_KEY" in repr(vars(backend))  # the variable's name is kept, not its value

    monkeypatch.setenv("LOOPBACK_KEY", "sk-wrong-KEY")
    with pytest.raises(ServerError, match=r"refused the request \(401\).*\$LOOPBACK_KEY") as err:
        manager.load(loopback.url, name="other", api_key_env="LOOPBACK_KEY", reload=True)
    assert "sk-wrong-KEY" not in str(err.value) and SECRET not in str(err.value)
    monkeypatch.delenv("LOOPBACK_KEY")
    with pytest.raises(InvalidOptionError, match="LOOPBACK_KEY is empty or not set"):
        manager.load(loopback.url, name="other", api_key_env="LOOPBACK_KEY", reload=True)
    with pytest.raises(InvalidOptionError, match="must name an environment variable"):
        manager.load(loopback.url, name="other", api_key_env=SECRET)
    assert manager.names() == ["lb"]


def test_without_a_named_variable_no_key_from_the_environment_is_sent(
        manager, loopback, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    manager.load(loopback.url, name="lb")
    lm.generate("Hi", model="lb", manager=manager)
    assert not [h for h in loopback.headers_seen if SECRET in json.dumps(h)]


# -- budgets ----------------------------------------------------------------------------


def test_budgets_and_eviction_leave_served_models_alone(manager, loopback, tiny_gpt2,
                                                       tiny_llama):
    manager.load(loopback.url, name="lb")
    assert resources.residents(manager) == []
    assert lm.budget(manager=manager)["cpu"].used == 0
    first = manager.load(str(tiny_gpt2), name="a").info.memory
    second = lm.estimate(str(tiny_llama)).memory
    lm.budget(manager=manager, cpu=max(first, second) + min(first, second) // 2)
    with pytest.warns(LLMMagicWarning, match="Evicted 'a'"):
        manager.load(str(tiny_llama), name="b")
    assert sorted(manager.names()) == ["b", "lb"]
    lm.budget(manager=manager, cpu=1000)
    with pytest.raises(BudgetExceededError) as err:
        manager.load(str(tiny_gpt2), name="c", dtype="float16", reload=True)
    assert "lb" not in str(err.value) and manager.is_loaded("lb")


# -- magics -----------------------------------------------------------------------------


@pytest.fixture
def ip() -> Iterator[InteractiveShell]:
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "llm_magic")
    yield shell
    manager = lm.get_manager()
    for name in manager.names():
        manager.unload(name)
    manager.last_generation = None
    shell.run_line_magic("unload_ext", "llm_magic")
    shell.user_ns.pop("_llm", None)


def test_the_magics_load_list_and_generate_with_a_served_model(ip, served_demo, capsys):
    ip.run_line_magic("llm", f"load {served_demo.url} --model {served_demo.model} --as srv")
    ip.run_line_magic("llm", "list")
    out = capsys.readouterr().out
    assert f"{served_demo.model} at {served_demo.url}" in out and "srv" in out
    ip.run_cell_magic("llm", "srv -n 12 --no-stream", PROMPTS[0])
    result = ip.user_ns["_llm"]
    assert result.model == "srv" and result.stats.new_tokens == 12
    with pytest.raises(UsageError, match="served at"):
        ip.run_cell_magic("llm", "srv --attention -n 4", PROMPTS[0])


def test_the_magics_turn_server_errors_into_one_line_usage_errors(ip, loopback, monkeypatch):
    from _serve import free_port

    with pytest.raises(UsageError, match="Cannot reach the model server") as err:
        ip.run_line_magic("llm", f"load http://127.0.0.1:{free_port()}/v1 --model m --as x")
    assert "\n" not in str(err.value) and type(err.value) is UsageError
    monkeypatch.setenv("LB_KEY", SECRET)
    loopback.key = "another"
    with pytest.raises(UsageError) as err:
        ip.run_line_magic("llm", f"load {loopback.url} --api-key-env LB_KEY --as x")
    assert SECRET not in str(err.value) and "$LB_KEY" in str(err.value)
    assert lm.get_manager().names() == []



def test_a_conversation_sends_its_messages_and_reports_the_servers_cache(manager, loopback):
    manager.load(loopback.url, name="lb")
    conv = lm.chat(model="lb", system="Be brief.", manager=manager)
    first = conv.say("Hi")
    assert first.stats.cache_note == "the server reports no cached tokens"
    assert first.stats.reused_tokens is None and first.conversation == conv.id
    loopback.cached = 5
    second = conv.say("More?")
    assert loopback.requests[-1]["messages"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello, world!"}, {"role": "user", "content": "More?"}]
    assert "prompt" not in loopback.requests[-1]
    assert second.stats.reused_tokens == 5 and "reused 5 of 7" in str(second.stats)
    plain = lm.chat(model="lb", manager=manager, chat=False)
    plain.say("Hi")
    assert loopback.requests[-1]["prompt"] == "User: Hi\nAssistant:"
    assert "\nUser:" in loopback.requests[-1]["stop"]
