"""Conversations in cells: ``%%llm -c``, ``--conversation NAME``, ``%llm conversations``,
``%llm forget``, through a real InteractiveShell and the bundled demo model."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import llm_magic as lm
from llm_magic.generation.conversation import find, forget


@pytest.fixture(scope="module")
def shell() -> InteractiveShell:
    return InteractiveShell.instance()


@pytest.fixture
def ip(shell: InteractiveShell):
    shell.run_line_magic("load_ext", "llm_magic")
    shell.run_line_magic("llm", "load demo")
    yield shell
    forget(all=True)
    manager = lm.get_manager()
    for name in manager.names():
        manager.unload(name)
    manager.last_generation = None
    shell.run_line_magic("unload_ext", "llm_magic")
    shell.user_ns.pop("_llm", None)


def test_continue_starts_then_continues_the_current_conversation(ip, capsys):
    ip.run_cell_magic("llm", "-c -n 6 --no-stream", "def add(a, b):")
    first = ip.user_ns["_llm"]
    assert first.turn == 0 and first.conversation is not None
    ip.run_cell_magic("llm", "-c -n 6 --no-stream", "import os")
    second = ip.user_ns["_llm"]
    assert second.conversation == first.conversation and second.turn == 1
    assert second.stats.reused_tokens > 0
    from llm_magic.magics._output import render

    footer = render(second, "text")["text/html"]  # what the notebook shows under the text
    assert f"reused {second.stats.reused_tokens:,} of {second.stats.prompt_tokens:,}" in footer
    conv = find()
    assert [m["role"] for m in conv.messages] == ["user", "assistant"] * 2


def test_named_conversations_are_kept_apart_listed_and_forgotten(ip, capsys):
    ip.run_cell_magic("llm", "--conversation alpha -n 4 --no-stream", "class A:")
    ip.run_cell_magic("llm", "--conversation beta -n 4 --no-stream", "class B:")
    ip.run_cell_magic("llm", "--conversation alpha -n 4 --no-stream", "class C:")
    assert len(find("alpha").turns) == 2 and len(find("beta").turns) == 1
    capsys.readouterr()
    ip.run_line_magic("llm", "conversations")
    table = capsys.readouterr().out
    assert "alpha" in table and "beta" in table and "demo" in table and "KB" in table
    ip.run_line_magic("llm", "forget alpha")
    assert "Forgot conversation 'alpha'" in capsys.readouterr().out
    assert find("alpha") is None
    ip.run_line_magic("llm", "list")
    assert "cache" in capsys.readouterr().out  # beta's cache still counts beside the model
    ip.run_line_magic("llm", "forget --all")
    assert find("beta") is None


def test_system_and_trim_reach_the_conversation(ip):
    ip.run_cell_magic("llm", "--conversation sys --system 'Be brief.' --trim -n 4 --no-stream",
                      "Hi")
    conv = find("sys")
    assert conv.system == "Be brief." and conv.trim == "oldest"
    assert conv.messages[0] == {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize("line, body, match", [
    ("-c --batch", "a\n---\nb", "--batch does not apply"),
    ("-c --conversation x", "hi", "give one of them"),
    ("--conversation '<b>x</b>'", "hi", "letters, digits"),
    ("--trim", "hi", "--trim applies to a conversation"),
    ("--conversation x --score", "hi", "--score does not apply"),
    ("-c", "   ", "empty"),
])
def test_bad_conversation_cells_are_refused_in_one_line(ip, line, body, match):
    with pytest.raises(UsageError, match=match):
        ip.run_cell_magic("llm", line, body)
    assert find() is None or not find().turns


def test_a_conversation_on_another_model_is_refused(ip, tiny_gpt2):
    ip.run_cell_magic("llm", "--conversation pinned -n 3 --no-stream", "Hi")
    ip.run_line_magic("llm", f"load {tiny_gpt2} --as tiny")
    try:
        with pytest.raises(UsageError, match="talks to 'demo'"):
            ip.run_cell_magic("llm", "tiny --conversation pinned -n 3", "Again")
        assert len(find("pinned").turns) == 1
    finally:
        lm.unload("tiny")


def test_forget_without_a_name_and_an_unknown_name(ip):
    with pytest.raises(UsageError, match="Name the conversation"):
        ip.run_line_magic("llm", "forget")
    with pytest.raises(UsageError, match="No conversation named"):
        ip.run_line_magic("llm", "forget nope")


def test_chat_with_earlier_messages_and_bad_messages(ip):
    conv = lm.chat(model="demo", messages=[{"role": "user", "content": "Hi"},
                                           {"role": "assistant", "content": " Hello"}],
                   max_new_tokens=3)
    gen = conv.say("Bye")
    text = lm.get_manager().backend("demo").tokenizer.decode(list(gen.prompt_ids))
    assert text == "User: Hi\nAssistant: Hello\nUser: Bye\nAssistant:"
    for bad, match in (([{"role": "assistant", "content": "x"}], "user speaks next"),
                       ([{"role": "user", "content": "x"}], "end on a reply"),
                       ([{"role": "robot", "content": "x"}], "role"),
                       ("Hi", "list of")):
        with pytest.raises(lm.InvalidOptionError, match=match):
            lm.chat(model="demo", messages=bad)
