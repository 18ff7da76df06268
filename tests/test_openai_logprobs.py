"""Token records from served models: the OpenAI formats, a refusal, and a server without them.

A loopback server of the test's own speaks the OpenAI format with ``logprobs``
as vLLM sends them; the real ``transformers serve`` ignores the field, which
must read as one line, not as empty records.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from test_openai_backend import Loopback, _Handler

import llm_magic as lm
from llm_magic.errors import ServerError

#: The alternatives this server gives each piece: the piece itself first, then two others.
_TOP = {"Hello": -0.2, ",": -0.05, " world": -1.2, "!": -0.7}


class _LogprobsHandler(_Handler):
    """Adds ``logprobs`` to each streamed piece when the request asked for them."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        if self.server.mode == "refuse":
            length = int(self.headers["Content-Length"])
            self.server.requests.append(json.loads(self.rfile.read(length)))
            self._json(400, {"object": "error", "type": "BadRequestError", "code": 400,
                             "message": "logprobs are not supported by this server"})
            return
        super().do_POST()

    def _event(self, text: str, finish: str | None = None) -> None:
        asked = self.server.requests[-1]
        if not text or not asked.get("logprobs"):
            super()._event(text, finish)
            return
        lp = _TOP.get(text, -3.0)
        others = [(text, lp), (" x", lp - 1.0), (" y", lp - 2.0)]
        if self.path.endswith("/chat/completions"):
            k = asked["top_logprobs"]
            entry = {"token": text, "logprob": lp, "bytes": list(text.encode()),
                     "top_logprobs": [{"token": t, "logprob": v, "bytes": None}
                                      for t, v in others[:k]]}
            choice = {"index": 0, "delta": {"role": "assistant", "content": text},
                      "logprobs": {"content": [entry]}, "finish_reason": finish}
            chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0,
                     "model": "tiny", "choices": [choice]}
        else:
            k = asked["logprobs"]
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": {
                "tokens": [text], "token_logprobs": [lp], "text_offset": [0],
                "top_logprobs": [dict(others[:k])]}}
            chunk = {"id": "x", "object": "text_completion", "created": 0, "model": "tiny",
                     "choices": [choice]}
        self._send(f"data: {json.dumps(chunk)}\n\n".encode())


@pytest.fixture
def server():
    s = Loopback()
    s.RequestHandlerClass = _LogprobsHandler
    s.thread.start()
    yield s
    s.release.set()
    s.shutdown()
    s.server_close()


@pytest.mark.parametrize("chat", [False, True])
def test_served_records_fill_the_same_fields(manager, server, chat):
    manager.load(server.url, name="lb")
    g = lm.generate("Hi", model="lb", max_new_tokens=4, logprobs=2, chat=chat,
                    manager=manager)
    sent = server.requests[-1]
    if chat:
        assert (sent["logprobs"], sent["top_logprobs"]) == (True, 2)
    else:
        assert sent["logprobs"] == 2
    assert g.text == "Hello, world!"
    assert [r.text for r in g.tokens] == ["Hello", ",", " world", "!"]
    first = g.tokens[0]
    assert first.id is None and first.rank == 1 and math.isclose(first.logprob, -0.2)
    assert [t for _, t, _ in first.top] == ["Hello", " x"]
    assert [lp for _, _, lp in first.top] == sorted((lp for _, _, lp in first.top), reverse=True)


def test_a_served_branch_sends_the_prefix_as_text(manager, server):
    manager.load(server.url, name="lb")
    g = lm.generate("Hi", model="lb", max_new_tokens=4, logprobs=2, manager=manager)
    b = g.branch(1, " x", manager=manager)
    assert server.requests[-1]["prompt"] == "Hi" + "Hello" + " x"
    assert b.text == "Hello x" + "Hello, world!"
    assert (b.parent, b.branch_at) == (g.id, 1)
    assert [r.text for r in b.tokens[:2]] == ["Hello", " x"] and b.tokens[1].rank == 2


def test_a_token_outside_the_sent_alternatives_cannot_be_branched_to(manager, server):
    manager.load(server.url, name="lb")
    g = lm.generate("Hi", model="lb", max_new_tokens=4, logprobs=2, manager=manager)
    with pytest.raises(lm.NotAvailableError):
        g.branch(1, " zebra", manager=manager)


def test_a_refusal_is_one_line_naming_it(manager, server):
    manager.load(server.url, name="lb")
    server.mode = "refuse"
    with pytest.raises(ServerError, match="refused logprobs") as caught:
        lm.generate("Hi", model="lb", max_new_tokens=4, logprobs=2, manager=manager)
    assert "\n" not in str(caught.value)
    assert "not supported by this server" in str(caught.value)
    server.mode = "ok"
    assert lm.generate("Hi", model="lb", max_new_tokens=4, manager=manager).text


def test_a_server_that_ignores_logprobs_says_so_and_keeps_the_text(manager, served_demo):
    manager.load(served_demo.url, name="served")
    with pytest.raises(ServerError, match="sent no logprobs") as caught:
        lm.generate("The import statement", model="served", max_new_tokens=5, logprobs=3,
                    manager=manager)
    assert "\n" not in str(caught.value)
    kept: Any = manager.last_generation
    assert kept is not None and kept.text and kept.stats.new_tokens >= 1
