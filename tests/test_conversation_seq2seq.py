"""Conversations with encoder–decoder models: the plain transcript is the source, each turn.

An encoder reads its source both ways, so no cache is kept: every turn reads the
whole transcript again, says so in its footer, and counts nothing in memory.
Each turn is checked against transformers' own generate on the transcript
written in the test; fork, undo, a branch, the context limit and a cell go
through the same calls as for causal models.
"""

from __future__ import annotations

import threading

import pytest
import torch
from _models import build_seq2seq
from IPython.core.interactiveshell import InteractiveShell

import llm_magic as lm
from llm_magic.errors import InvalidOptionError, PromptTooLongError
from llm_magic.generation.conversation import conversations, forget

QUESTIONS = ["def add(a, b):", "import os", "class A:", "return x"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("chat-s2s")
    return {"t5": build_seq2seq(root / "t5", "t5", n_positions=512),
            "bart": build_seq2seq(root / "bart", "bart", max_position_embeddings=512),
            "short": build_seq2seq(root / "short", "bart")}  # an encoder of 64 positions


def _transcript(system: str | None, pairs: list[tuple[str, str]], question: str) -> str:
    head = f"{system}\n" if system else ""
    done = "".join(f"User: {q}\nAssistant:{a}\n" for q, a in pairs)
    return f"{head}{done}User: {question}\nAssistant:"


def _reference(backend, source: str, n: int) -> list[int]:
    ids = backend.tokenizer(source, return_tensors="pt")
    with torch.inference_mode():
        out = backend.model.generate(**ids, do_sample=False, max_new_tokens=n, min_new_tokens=n)
    return out[0, 1:].tolist()


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_each_turn_is_transformers_generate_on_the_whole_transcript(built, manager, arch):
    manager.load(str(built[arch]), name=arch, dtype="float32")
    backend = manager.backend(arch)
    conv = lm.chat(model=arch, system="Be brief.", manager=manager, max_new_tokens=6,
                   logprobs=1)
    pairs: list[tuple[str, str]] = []
    for question in QUESTIONS[:3]:
        gen = conv.say(question)
        source = _transcript("Be brief.", pairs, question)
        assert list(gen.prompt_ids) == backend.tokenizer(source)["input_ids"]
        assert [r.id for r in gen.tokens] == _reference(backend, source, 6)
        assert gen.stats.reused_tokens == 0 and "encoder–decoder" in gen.stats.reuse
        pairs.append((question, gen.text))
    assert conv.cache_bytes == 0 and manager.info(arch).cache == 0
    assert [t.reused for t in conv.turns] == [0, 0, 0]


def test_fork_undo_and_a_branch_go_on_from_the_same_messages(built, manager):
    manager.load(str(built["bart"]), name="bart", dtype="float32")
    backend = manager.backend("bart")
    conv = lm.chat(model="bart", manager=manager, max_new_tokens=5, logprobs=3)
    first = conv.say(QUESTIONS[0])
    turn = conv.say(QUESTIONS[1])
    twin = conv.fork()
    nxt = twin.say(QUESTIONS[2])
    source = _transcript(None, [(QUESTIONS[0], first.text), (QUESTIONS[1], turn.text)],
                         QUESTIONS[2])
    assert [r.id for r in nxt.tokens] == _reference(backend, source, 5)
    conv.undo()
    again = conv.say(QUESTIONS[3])
    source = _transcript(None, [(QUESTIONS[0], first.text)], QUESTIONS[3])
    assert [r.id for r in again.tokens] == _reference(backend, source, 5)
    alt = turn.tokens[1].top[1][0]
    branched = turn.branch(1, alt, manager=manager)
    assert branched.conversation not in (None, conv.id, twin.id) and branched.turn == 1
    assert [r.id for r in branched.tokens[:2]] == [turn.tokens[0].id, alt]
    fork = next(c for c in conversations(manager=manager) if c.id == branched.conversation)
    assert fork.messages[-1]["content"] == branched.text


def test_an_interrupted_turn_keeps_its_text_and_the_next_turn_reads_it(built, manager):
    manager.load(str(built["t5"]), name="t5", dtype="float32")
    backend = manager.backend("t5")
    conv = lm.chat(model="t5", manager=manager, max_new_tokens=30, logprobs=1)
    stop = threading.Event()
    calls = []

    def count(module, args, output):
        calls.append(1)
        if len(calls) == 4:
            stop.set()

    handle = backend.model.decoder.block[0].register_forward_hook(count)
    try:
        stopped = conv.say(QUESTIONS[0], stop_event=stop)
    finally:
        handle.remove()
    assert stopped.interrupted and 0 < stopped.stats.new_tokens < 30
    assert conv.messages[-1]["content"] == stopped.text and conv.turns[-1].interrupted
    nxt = conv.say(QUESTIONS[1], max_new_tokens=4)
    source = _transcript(None, [(QUESTIONS[0], stopped.text)], QUESTIONS[1])
    assert [r.id for r in nxt.tokens] == _reference(backend, source, 4)


def test_the_encoders_limit_refuses_or_trims(built, manager):
    manager.load(str(built["short"]), name="bart", dtype="float32")
    conv = lm.chat(model="bart", manager=manager, max_new_tokens=4)
    long = "word " * 8  # 36 tokens as a turn: one fits in 64, two do not
    conv.say(long)
    with pytest.raises(PromptTooLongError, match="reads at most 64"):
        conv.say(long)
    assert len(conv.turns) == 1  # nothing lost
    trimmed = lm.chat(model="bart", manager=manager, max_new_tokens=4, trim="oldest")
    trimmed.say(long)
    with pytest.warns(lm.LLMMagicWarning, match="dropped its 1 oldest turn"):
        trimmed.say(long)
    assert len(trimmed.messages) == 2


def test_what_still_does_not_apply_is_refused(built, manager):
    manager.load(str(built["t5"]), name="t5", dtype="float32")
    with pytest.raises(InvalidOptionError, match="Chat templates do not apply"):
        lm.chat(model="t5", manager=manager, chat=True).say("Hello")
    with pytest.raises(InvalidOptionError, match="A system prompt does not apply"):
        lm.generate("Hello", model="t5", system="Be brief.", manager=manager)


def test_a_conversation_cell_with_the_translator():
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "llm_magic")
    manager = lm.get_manager()
    try:
        shell.run_line_magic("llm", "load demo-translator --as tr")
        shell.run_cell_magic("llm", "tr -c --no-stream", "3/3/2021")
        first = shell.user_ns["_llm"]
        shell.run_cell_magic("llm", "tr -c --no-stream", "March 4th 2022")
        second = shell.user_ns["_llm"]
        assert second.conversation == first.conversation and second.turn == 1
        assert second.stats.reused_tokens == 0
        from llm_magic.magics._output import render

        footer = render(second, "text")["text/html"]
        assert "reads the whole conversation again each turn" in footer
    finally:
        forget(all=True)
        if manager.is_loaded("tr"):
            manager.unload("tr")
        manager.last_generation = None
        shell.run_line_magic("unload_ext", "llm_magic")
        shell.user_ns.pop("_llm", None)
