"""The playground's conversation mode, and the kept caches in the models panel.

The widget's state under ipywidgets' default (dummy) comm, with real tiny
transformers models: each turn sent from the playground is a turn of a real
:class:`~llm_magic.Conversation`, checked against transformers' own
``generate`` on the chat template's ids (no cache given) and against the same
turns through ``lm.chat``. Clicks go through the buttons' own ``click()``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from IPython.core.interactiveshell import InteractiveShell

import llm_magic as lm
from llm_magic.errors import ConversationBusyError
from llm_magic.generation.conversation import find, forget
from llm_magic.manager.info import size
from llm_magic.widgets._transcript import TranscriptView, footer, rows
from llm_magic.widgets.models import ModelsView
from llm_magic.widgets.playground import Playground

XSS = "<img src=x onerror=alert(1)><script>alert(2)</script>"
QUESTIONS = ["What is a list?", "And a dict?", "Why?"]


def _wait_for(predicate: Any, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def _bundle(widget: Any) -> dict[str, Any]:
    bundle = widget._repr_mimebundle_()
    return bundle[0] if isinstance(bundle, tuple) else bundle


@pytest.fixture
def long_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from _models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("long"), arch="gpt2", context=4096)


@pytest.fixture
def playground(manager):
    made: list[Playground] = []

    def make() -> Playground:
        made.append(Playground(manager=manager))
        return made[-1]

    yield make
    for pg in made:
        pg.stop(wait=True)
        pg.close()
    forget(all=True, manager=manager)


def _say(pg: Playground, text: str) -> lm.Generation:
    pg.prompt.value = text
    gen = pg.generate(wait=True)
    assert gen is not None, pg.transcript.error
    return gen


# --------------------------------------------------------------------------- turns


def test_three_turns_from_the_playground_are_the_conversations_turns(manager, tiny_llama,
                                                                    playground):
    manager.load(str(tiny_llama), name="tiny", dtype="float32")
    pg = playground()
    pg.max_new_tokens.value = 8
    assert pg.generate_button.description == "Generate" and pg.conv is None
    pg.conversation.value = True
    conv = pg.conv
    assert conv is not None and find(manager=manager) is conv  # cells' -c continues it
    view = pg.transcript
    assert (view.name, pg.generate_button.description) == (conv.name, "Send")
    assert view.notice == f"Started {conv.name!r} with 'tiny'." and view.messages == []
    assert pg.output.layout.display == "none" and view.layout.display == ""
    backend = manager.backend("tiny")
    gens = []
    for question in QUESTIONS:
        gen = _say(pg, question)
        gens.append(gen)
        assert gen.conversation == conv.id and pg.prompt.value == ""  # the box is cleared
        # transformers' own greedy generate on the chat template's ids, with no cache given
        messages = [{"role": m["role"], "content": m["content"]} for m in conv.messages[:-1]]
        ids = backend.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                    tokenize=True, return_dict=False)
        assert list(gen.prompt_ids) == list(ids)
        with torch.inference_mode():
            out = backend.model.generate(input_ids=torch.tensor([ids]), do_sample=False,
                                         max_new_tokens=gen.stats.new_tokens,
                                         attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                         pad_token_id=backend.pad_id)
        expected = backend.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
        assert gen.text == expected
    assert gens[1].stats.reused_tokens > 0 and gens[2].stats.reused_tokens > 0
    assert pg.last is gens[-1] is manager.last_generation
    # the same turns through the API give the same replies
    api = lm.chat(model="tiny", manager=manager, max_new_tokens=8)
    assert [api.say(q).text for q in QUESTIONS] == [g.text for g in gens]
    # the transcript: user and assistant turns, each reply with its reuse footer
    assert [(m["role"], m["content"]) for m in view.messages] == [
        (m["role"], m["content"]) for m in conv.messages]
    footers = [m["footer"] for m in view.messages if m["role"] == "assistant"]
    assert footers == [f"{g.stats.new_tokens} new tokens; {g.stats.reuse}" for g in gens]
    assert "reused 0 of" in footers[0] and footers[2].startswith("8 new tokens; reused ")
    assert view.about == f"with 'tiny' · 3 turns · cache {size(conv.cache_bytes)}"
    assert conv.cache_bytes > 0 and view.state == "done" and view.error == ""


def test_stop_keeps_the_partial_reply_as_an_interrupted_turn(manager, long_model, playground):
    manager.load(str(long_model), name="long")
    pg = playground()
    pg.conversation.value = True
    pg.max_new_tokens.value = 3000
    pg.prompt.value = "Hello"
    assert pg.generate() is None  # returns at once
    view = pg.transcript
    assert pg.running and pg.generate_button.disabled and not pg.stop_button.disabled
    assert all(b.disabled for b in (pg.new_button, pg.fork_button, pg.undo_button,
                                    pg.conversation))
    assert _wait_for(lambda: len(view.pending_text) > 20, timeout=60)
    assert view.pending_prompt == "Hello" and view.state == "generating"
    pg.stop(wait=True)
    gen = pg.last
    assert gen is not None and gen.interrupted and 0 < gen.stats.new_tokens < 3000
    conv = pg.conv
    assert conv is not None and conv.messages[-1] == {"role": "assistant", "content": gen.text,
                                                      "interrupted": True}
    assert conv.turns[-1].interrupted
    last = view.messages[-1]
    assert last["interrupted"] and last["content"] == gen.text and len(gen.text) > 20
    assert view.state == "stopped" and view.pending_prompt == ""
    assert not pg.running and not pg.new_button.disabled and pg.stop_button.disabled
    pg.max_new_tokens.value = 4
    after = _say(pg, "Go on")
    assert after.stats.new_tokens == 4 and after.stats.reused_tokens > 0  # usable, reused
    assert "(interrupted)" in repr(pg)


def test_a_cell_turn_never_interleaves_with_the_widgets(long_model):
    """A cell's turn while the widget's runs is refused; the widget's while a cell's runs is
    refused in the widget's one line, its message kept; the cell's turn then shows."""
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "llm_magic")
    manager = lm.get_manager()
    manager.load(str(long_model), name="pg-long")
    pg = Playground(manager=manager)
    try:
        pg.conversation.value = True
        conv = pg.conv
        assert conv is not None and find(manager=manager) is conv
        pg.max_new_tokens.value = 3000
        pg.prompt.value = "Hello"
        pg.generate()
        assert _wait_for(lambda: len(pg.transcript.pending_text) > 10, timeout=60)
        result = ip.run_cell("%%llm -c -n 5\nA cell's turn")  # the current: the widget's
        assert isinstance(result.error_in_exec, Exception)
        assert "answering another turn" in str(result.error_in_exec)
        with pytest.raises(ConversationBusyError):
            conv.say("from code", max_new_tokens=3)
        pg.stop(wait=True)
        assert len(conv.turns) == 1 and conv.turns[0].interrupted  # nothing interleaved
        # now a cell's turn runs, and the widget's Send is refused in one line
        started = threading.Event()
        manager.events.subscribe(lambda e: started.set(), kinds={"generation_start"})
        cell = threading.Thread(target=lambda: conv.say("A long one", max_new_tokens=2000),
                                daemon=True)
        cell.start()
        assert started.wait(30) and _wait_for(lambda: conv.busy, 5)
        assert _wait_for(lambda: pg.transcript.state == "elsewhere", 5)
        pg.prompt.value = "Mine"
        assert pg.generate() is None
        error = pg.transcript.error
        assert error.startswith(f"Conversation {conv.name!r} is answering another turn")
        assert "\n" not in error and pg.prompt.value == "Mine" and not pg.running
        assert pg.transcript.state == "elsewhere"
        cell.join(120)
        assert _wait_for(lambda: len(pg.transcript.messages) == 4, 10)  # the cell's turn shows
        assert pg.transcript.messages[2]["content"] == "A long one"
        assert _wait_for(lambda: pg.transcript.state == "done", 5)
        assert pg.transcript.error == ""  # the refusal was about the turn that has ended
        pg.max_new_tokens.value = 5
        assert _say(pg, "Mine").conversation == conv.id and len(conv.turns) == 3
    finally:
        pg.close()
        forget(all=True, manager=manager)
        manager.unload("pg-long")


# --------------------------------------------------------------------------- new, fork, undo


def test_new_fork_and_undo_call_the_conversation_api(manager, tiny_llama, playground):
    manager.load(str(tiny_llama), name="tiny")
    pg = playground()
    pg.max_new_tokens.value = 5
    pg.undo_button.click()  # one-shot mode: nothing to undo
    assert pg.output.error == "No conversation to undo: tick 'conversation' or press New."
    pg.conversation.value = True
    first = pg.conv
    assert first is not None
    _say(pg, "One")
    _say(pg, "Two")
    pg.fork_button.click()
    twin = pg.conv
    assert twin is not None and twin is not first and pg.transcript.name == twin.name
    assert twin.messages == first.messages and twin.cache_bytes == first.cache_bytes > 0
    assert pg.transcript.notice == (f"Forked {first.name!r} into {twin.name!r}; this "
                                    f"playground goes on with {twin.name!r}.")
    _say(pg, "Three")
    assert len(twin.turns) == 3 and len(first.turns) == 2  # the fork went its own way
    pg.undo_button.click()
    assert len(twin.turns) == 2 and pg.prompt.value == "Three"  # the message is back
    assert len(pg.transcript.messages) == 4
    assert pg.transcript.notice == "Undid the last exchange; its message is back in the box."
    pg.prompt.value = "kept"
    pg.undo_button.click()
    assert pg.prompt.value == "kept" and len(twin.turns) == 1
    pg.undo_button.click()
    pg.undo_button.click()  # nothing left: one line, nothing lost
    assert pg.transcript.error == f"Conversation {twin.name!r} has no turn to undo."
    pg.new_button.click()
    fresh = pg.conv
    assert fresh is not None and fresh.name not in (first.name, twin.name)
    assert pg.transcript.messages == [] and pg.transcript.name == fresh.name
    assert {first.name, twin.name, fresh.name} <= {c.name for c in lm.conversations(
        manager=manager)}  # New leaves the others in the kernel


def test_the_playground_continues_the_kernels_current_conversation(manager, tiny_gpt2,
                                                                   tiny_llama, playground):
    manager.load(str(tiny_gpt2), name="a")
    manager.load(str(tiny_llama), name="b")
    conv = lm.chat(model="a", manager=manager, system="Be brief.",
                   messages=[{"role": "user", "content": "Hi"},
                             {"role": "assistant", "content": "Hello", "interrupted": True}],
                   max_new_tokens=4)
    gen = conv.say("How are you?")
    pg = playground()
    pg.max_new_tokens.value = 4
    pg.model.value = "b"
    pg.conversation.value = True
    assert pg.conv is conv and pg.model.value == "a"  # its model is chosen with it
    assert pg.transcript.notice == f"Continuing the kernel's current conversation {conv.name!r}."
    shown = pg.transcript.messages
    assert [m["role"] for m in shown] == ["system", "user", "assistant", "user", "assistant"]
    assert shown[2]["interrupted"] and shown[2]["footer"] == ""  # given, not a turn
    assert shown[4]["footer"] == f"{gen.stats.new_tokens} new tokens; {gen.stats.reuse}"
    # another model in the dropdown: refused in one line, the message kept
    pg.model.value = "b"
    pg.prompt.value = "Next"
    assert pg.generate(wait=True) is None
    assert pg.transcript.error == (f"Conversation {conv.name!r} talks to 'a', not 'b': choose "
                                   "'a' again, or press New for a conversation with 'b'.")
    assert pg.prompt.value == "Next" and len(conv.turns) == 1
    pg.new_button.click()
    ours = pg.conv
    assert ours is not None and ours.model == "b"
    pg.model.value = "a"  # ours is still empty: the next turn starts it afresh with 'a'
    assert _say(pg, "Next").model == "a" and pg.conv is not ours
    assert ours.name not in {c.name for c in lm.conversations(manager=manager)}


def test_hostile_input_is_refused_in_one_line_and_nothing_is_lost(manager, tiny_gpt2,
                                                                  playground):
    manager.load(str(tiny_gpt2), name="tiny")
    pg = playground()
    pg.max_new_tokens.value = 4
    pg.conversation.value = True
    conv = pg.conv
    assert conv is not None
    pg.prompt.value = "   "
    assert pg.generate(wait=True) is None
    assert pg.transcript.error == "The message is empty: write one to send."
    pg.prompt.value, pg.seed.value = "Hi", "1.5"
    assert pg.generate(wait=True) is None and "seed" in pg.transcript.error
    pg.seed.value = ""
    _say(pg, XSS)
    html = _bundle(pg)["text/html"]
    assert "<img" not in html and "<script" not in html and "&lt;img src=x" in html
    assert XSS in _bundle(pg)["text/plain"]
    forget(conv.name, manager=manager)  # from a cell
    pg.prompt.value = "Hi"
    assert pg.generate(wait=True) is None
    assert pg.transcript.error == (f"Conversation {conv.name!r} was forgotten (its cache freed); "
                                   "press New to start another.")
    pg.fork_button.click()
    assert "was forgotten" in pg.transcript.error and pg.prompt.value == "Hi"
    pg.new_button.click()
    manager.unload("tiny")
    assert pg.generate(wait=True) is None and "No model is loaded" in pg.transcript.error


def test_one_shot_mode_is_unchanged_and_the_snapshots_follow_the_mode(manager, tiny_gpt2,
                                                                      playground):
    manager.load(str(tiny_gpt2), name="tiny")
    pg = playground()
    assert repr(pg).splitlines()[2] == "[Generate] [Stop (disabled)]"
    pg.max_new_tokens.value = 4
    pg.prompt.value = "Hello"
    one = pg.generate(wait=True)
    assert one is not None and one.conversation is None and pg.output.text == one.text
    pg.conversation.value = True
    pg.prompt.value = "Hi"
    gen = pg.generate(wait=True)
    assert gen is not None and gen.conversation == pg.conv.id  # type: ignore[union-attr]
    lines = repr(pg).splitlines()
    assert lines[0] == pg.transcript.lines()[0] and "user: Hi" in lines
    assert lines[-1] == "[Send] [Stop (disabled)] [New] [Fork] [Undo] [x] conversation"
    html = _bundle(pg)["text/html"]
    assert ">Send<" in html and ">Fork<" in html and "user" in html and gen.stats.reuse in html
    pg.conversation.value = False
    assert pg.generate_button.description == "Generate" and pg.output.layout.display == ""
    assert pg.transcript.layout.display == "none" and ">Fork<" not in _bundle(pg)["text/html"]


def test_transcript_rows_match_turns_from_the_end():
    view = TranscriptView()
    assert view.lines() == ["No turns yet: write a message below and press Send."]
    from llm_magic.generation.conversation import Turn

    assert footer(Turn(0, 2011, 1984, 7, note="recomputed")) == (
        "7 new tokens; reused 1,984 of 2,011 prompt tokens (98.7%), recomputed")

    class Fake:  # messages given at the start have no turn; the last turns do
        messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
        turns = [Turn(0, 10, 0, 3)]

    shown = rows(Fake())  # type: ignore[arg-type]
    assert [m["footer"] for m in shown] == ["", "", "", "3 new tokens; reused 0 of 10 prompt "
                                            "tokens (0.0%)"]


# --------------------------------------------------------------------------- models panel


def test_the_models_panel_shows_the_kept_cache_beside_the_memory(manager, tiny_llama):
    manager.load(str(tiny_llama), name="tiny")
    view = ModelsView(manager=manager)
    try:
        (row,) = view.models
        assert row["cache"] == "" and view.lines()[0].endswith(f"{row['memory']} (estimated "
                                                               f"{row['estimate']})")
        conv = lm.chat(model="tiny", manager=manager, max_new_tokens=5)
        conv.say("Hello")
        view.refresh()
        cache = manager.info("tiny").cache
        assert cache == conv.cache_bytes > 0
        (row,) = view.models
        assert row["cache"] == size(cache)
        shown = f"{row['memory']} + {size(cache)} cache"
        assert shown in view.lines()[0] and f">{shown}<" in _bundle(view)["text/html"]
        forget(conv.name, manager=manager)
        view.refresh()
        assert view.models[0]["cache"] == "" and " cache" not in view.lines()[0]
    finally:
        view.close()
