"""History of conversations: turns as rows, reruns of a turn, resume in a new kernel.

Also the quantization a generation ran with (a rerun asks for the same weights),
old history files read after the migration, and a row of invalid UTF-8.
Each turn's row is checked against the file read as another program would, and
a rerun of a turn against transformers' own ``generate`` on the chat template's
rendering of the row's messages, with no cache.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import llm_magic as lm
from llm_magic.errors import InvalidOptionError, ModelNotLoadedError
from llm_magic.generation.conversation import conversations, find
from llm_magic.history import db, history, rerun
from llm_magic.history.conversations import chat, resume
from llm_magic.history.db import HistoryError

HISTORY = sys.modules["llm_magic.history.recorder"]
QUESTIONS = ["A list?", "def f():", "A dict?"]


def rows(path: Path, where: str = "1") -> list[sqlite3.Row]:
    """The file read directly, as another program would (once this process's writes are done)."""
    HISTORY._recorder.flush()
    con = sqlite3.connect(path)
    con.row_factory = sqlite3.Row
    try:
        return con.execute(f"SELECT * FROM generations WHERE {where} ORDER BY id").fetchall()
    finally:
        con.close()


@pytest.fixture
def llama(manager, tiny_llama):
    return manager.load(str(tiny_llama), name="llama", dtype="float32").name


def talk(manager, model: str, name: str | None = None, **options) -> tuple[lm.Conversation,
                                                                       list[lm.Generation]]:
    conv = lm.chat(model=model, manager=manager, name=name, max_new_tokens=4,
                   system="Be brief.", **options)
    return conv, [conv.say(q) for q in QUESTIONS]


def reference(path: Path, messages: list[dict[str, str]], n: int) -> list[int]:
    """The new ids transformers' generate gives for the template's rendering, with no cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                  return_dict=True)["input_ids"]
    ids = torch.tensor([list(ids)])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=n, min_new_tokens=n,
                             pad_token_id=tok.eos_token_id)
    return out[0, ids.shape[1]:].tolist()


# -- turns as rows ----------------------------------------------------------------


def test_each_turn_is_a_row_with_its_conversation_index_and_messages(store, manager, llama):
    lm.generate("Not a turn", model=llama, manager=manager, max_new_tokens=2)
    conv, gens = talk(manager, llama)
    found = rows(store, "conversation IS NOT NULL")
    assert [(r["id"], r["conversation"], r["turn"]) for r in found] == [
        (g.id, conv.id, i) for i, g in enumerate(gens)]
    assert [g.turn for g in gens] == [0, 1, 2] and {g.conversation for g in gens} == {conv.id}
    table = history(conversation=conv)
    assert [r.id for r in table] == [g.id for g in gens]  # in the order they were said
    assert [r.turn for r in table] == [0, 1, 2] and table.conversation == conv.id
    assert history(conversation=conv.id) == table
    assert history(2, conversation=conv.id) == table[1:]  # the latest two, still in order
    last = table[-1]
    sent = [{"role": "system", "content": "Be brief."}]
    for q, g in zip(QUESTIONS[:-1], gens[:-1], strict=True):
        sent += [{"role": "user", "content": q}, {"role": "assistant", "content": g.text}]
    assert last.messages == sent + [{"role": "user", "content": QUESTIONS[-1]}]
    assert last.output == gens[-1].text and last.prompt == QUESTIONS[-1]
    assert str(table).splitlines()[0].split()[:2] == ["turn", "id"]
    assert "<th>turn</th>" in table._repr_html_()
    assert history(5)[0].turn == 2 and history(5)[-1].conversation is None
    assert "No turn of conversation 0123456789ab" in str(history(conversation="0123456789ab"))


def test_history_by_the_name_of_a_conversation_of_this_kernel(store, tiny_gpt2):
    manager = lm.get_manager()
    manager.load(str(tiny_gpt2), name="hcgpt")
    try:
        conv, gens = talk(manager, "hcgpt", name="named")
        assert [r.id for r in history(conversation="named")] == [g.id for g in gens]
        conv.forget()
        with pytest.raises(InvalidOptionError, match="No conversation of this kernel"):
            history(conversation="named")  # forgotten here: its id still finds the turns
        assert len(history(conversation=conv.id)) == 3
    finally:
        manager.unload("hcgpt")


@pytest.mark.parametrize("bad, match", [
    ("<b>x</b>", r"named '<b>x</b>'"), ("", "empty"), (5, "not 5"), (True, "not True"),
    ("0123456789AB", "not a conversation's id"), (["a"], "not"),
])
def test_bad_conversation_arguments_are_refused(store, bad, match):
    with pytest.raises(InvalidOptionError, match=match):
        history(conversation=bad)


# -- rerun of a turn ------------------------------------------------------------------


def test_rerun_of_a_turn_replays_its_messages_and_matches(store, manager, llama, tiny_llama):
    conv, gens = talk(manager, llama, logprobs=1)
    other = lm.chat(model=llama, manager=manager, name="other")
    assert find(manager=manager) is other
    names = [c.name for c in conversations(manager=manager)]
    again = rerun(gens[2].id, manager=manager)
    assert again.matches and again.records_match, str(again)
    assert "turn 2 of conversation" in str(again) and "output matches" in str(again)
    new = again.generation
    assert new.turn == 2 and new.conversation not in (None, conv.id)
    assert not new.stats.reused_tokens  # computed from scratch, no kept cache
    # The same ids as transformers' generate on the template's rendering, with no cache.
    expected = reference(tiny_llama, again.original.messages, new.stats.new_tokens)
    assert [r.id for r in new.tokens] == expected
    # The temporary conversation is gone (and its cache), the current one is back.
    assert [c.name for c in conversations(manager=manager)] == names
    assert find(manager=manager) is other
    assert manager.backend(llama).kept.keys() == [conv.id]
    replayed = history(1)[0]
    assert replayed.id == new.id and replayed.turn == 2
    assert replayed.messages == again.original.messages
    # The first turn replays too (no earlier messages but the system message).
    assert rerun(gens[0].id, manager=manager).matches


def test_rerun_of_a_turn_says_when_it_differs(store, manager, llama):
    _, gens = talk(manager, llama)
    HISTORY._recorder.flush()
    con = sqlite3.connect(store)
    with con:
        con.execute("UPDATE generations SET output = 'not this' WHERE id = ?", (gens[1].id,))
    con.close()
    again = rerun(gens[1].id, manager=manager)
    assert not again.matches and again.generation.text == gens[1].text
    assert "differs from character 0" in str(again)


def test_a_turn_without_messages_is_refused_on_rerun(store, manager, llama):
    _, gens = talk(manager, llama)
    HISTORY._recorder.flush()
    con = sqlite3.connect(store)
    with con:
        con.execute("UPDATE generations SET params = '{}' WHERE id = ?", (gens[1].id,))
    con.close()
    with pytest.raises(HistoryError, match="no messages to send again"):
        rerun(gens[1].id, manager=manager)
    with pytest.raises(HistoryError, match="holds no messages"):
        resume(gens[1].id, manager=manager)


# -- resume -------------------------------------------------------------------------


def test_resume_rebuilds_the_conversation_and_continues_it(store, manager, llama):
    conv, gens = talk(manager, llama, temperature=0.0, top_k=5)
    again = chat(resume=gens[2].id, name="again", manager=manager)
    assert again.name == "again" and again.model == llama and again.id != conv.id
    assert again.messages == conv.messages and again.system == "Be brief."
    assert again.options["max_new_tokens"] == 4 and again.options["top_k"] == 5
    mine, theirs = conv.say("Go on"), again.say("Go on")
    assert theirs.text == mine.text and theirs.turn == mine.turn == 3
    # From an earlier turn: the conversation as it was then.
    early = resume(gens[0].id, manager=manager, max_new_tokens=2)
    assert early.messages == conv.messages[:3] and early.options["max_new_tokens"] == 2
    assert early.say("Go on").stats.new_tokens <= 2


def test_resume_in_a_fresh_process(store, manager, llama, tiny_llama):
    conv, gens = talk(manager, llama)
    expected = conv.say("One more")
    HISTORY._recorder.flush()
    code = (
        "import json, sys; import llm_magic as lm\n"
        "from llm_magic.history import configure\n"
        "from llm_magic.history.conversations import chat\n"
        "configure(path=sys.argv[1])\n"
        "lm.load(sys.argv[2], name='llama', dtype='float32')\n"
        "conv = chat(resume=int(sys.argv[3]), name='back')\n"
        "g = conv.say('One more')\n"
        "print(json.dumps({'messages': conv.messages[:-2], 'text': g.text, 'id': g.id,"
        " 'turn': g.turn}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    done = subprocess.run([sys.executable, "-c", code, str(store), str(tiny_llama),
                           str(gens[2].id)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["messages"] == conv.messages[:-2] and out["turn"] == 3
    assert out["text"] == expected.text
    assert rows(store, f"id = {out['id']}")[0]["turn"] == 3


def test_resume_refuses_bad_input_with_nothing_lost(store, manager, llama, tiny_gpt2):
    conv, gens = talk(manager, llama)
    plain = lm.generate("Not a turn", model=llama, manager=manager, max_new_tokens=2)
    before = [c.name for c in conversations(manager=manager)]
    for bad, error, match in [
        (999_999, HistoryError, "no generation 999999"),
        (plain.id, HistoryError, "is not a conversation's turn"),
        (True, InvalidOptionError, "not True"),
        ("3", InvalidOptionError, "not '3'"),
        (-1, InvalidOptionError, "positive"),
    ]:
        with pytest.raises(error, match=match):
            chat(resume=bad, manager=manager)
    with pytest.raises(InvalidOptionError, match="drop model="):
        chat(llama, resume=gens[0].id, manager=manager)
    with pytest.raises(InvalidOptionError, match="name"):
        chat(resume=gens[0].id, name="<b>x</b>", manager=manager)
    with pytest.raises(InvalidOptionError, match="exists"):
        chat(resume=gens[0].id, name=conv.name, manager=manager)
    with pytest.raises(InvalidOptionError, match="Unknown option 'colour'"):
        chat(resume=gens[0].id, manager=manager, colour=1)
    manager.unload(llama)
    manager.load(str(tiny_gpt2), name="gpt")
    with pytest.raises(ModelNotLoadedError, match=r"not loaded\. Load it with lm\.load\(.*then "
                                                  r"resume"):
        chat(resume=gens[0].id, manager=manager)
    assert [c.name for c in conversations(manager=manager)] == before


# -- quantization -------------------------------------------------------------------------


def test_a_quantized_generation_reruns_on_quantized_weights(store, manager, tiny_gpt2):
    manager.load(str(tiny_gpt2), name="q", quantize="int8")
    g = lm.generate("The import statement", model="q", manager=manager, max_new_tokens=8)
    assert rows(store, f"id = {g.id}")[0]["quantization"] == "int8"
    assert history(1)[0].quantization == "int8"
    manager.unload("q")
    manager.load(str(tiny_gpt2), name="plain")  # the same source, unquantized: not the same
    with pytest.raises(ModelNotLoadedError) as caught:
        rerun(g.id, manager=manager)
    text = str(caught.value)
    assert "with int8 weights" in text and "quantize='int8'" in text
    assert "--quantize int8" in text
    plain = lm.generate("The import statement", model="plain", manager=manager,
                        max_new_tokens=8)
    assert history(1)[0].quantization is None
    assert rerun(plain.id, manager=manager).generation.model == "plain"
    manager.unload("plain")
    manager.load(str(tiny_gpt2), name="q")  # its name, unquantized: reload is the way
    with pytest.raises(ModelNotLoadedError, match=r"quantize='int8', reload=True"):
        rerun(g.id, manager=manager)
    manager.unload("q")
    manager.load(str(tiny_gpt2), name="q8", quantize="int8")
    again = rerun(g.id, manager=manager)
    assert again.generation.model == "q8" and manager.info("q8").quantization == "int8"
    assert again.matches and again.notes == ()


# -- old files, bad rows -----------------------------------------------------------------


def test_a_file_of_the_previous_schema_reads_and_gains_the_columns(tmp_path, store, manager,
                                                                  llama):
    path = tmp_path / "old.sqlite"
    old = db.connect(path, db.MIGRATIONS[:3])
    row_id = db.insert(old, {"started_at": 1.0, "model": "m", "prompt": "kept", "output": "o",
                             "status": "ok"})
    old.close()
    from llm_magic.history import configure

    configure(path=path)
    [row] = history()
    assert (row.id, row.prompt, row.conversation, row.turn, row.quantization) == (
        row_id, "kept", None, None, None)
    _, gens = talk(manager, llama)
    assert [r.turn for r in history(conversation=gens[0].conversation)] == [0, 1, 2]
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == len(db.MIGRATIONS)
    con.close()


def test_a_row_of_invalid_utf8_does_not_hide_the_history(store, manager, llama):
    good = lm.generate("Fine", model=llama, manager=manager, max_new_tokens=2)
    bad = lm.generate("Damaged", model=llama, manager=manager, max_new_tokens=2)
    HISTORY._recorder.flush()
    con = sqlite3.connect(store)
    with con:
        con.execute("UPDATE generations SET output = CAST(x'41ff42' AS TEXT), "
                    "params = CAST(x'7bff' AS TEXT) WHERE id = ?", (bad.id,))
    con.close()
    table = history()
    assert [r.id for r in table] == [bad.id, good.id]
    assert table[0].output == "A\ufffdB" and "damaged" in table[0].params
    assert "A\ufffdB" in str(table) and table[1].output == good.text
    assert history(search="Fine")[0].id == good.id


# -- cells ------------------------------------------------------------------------------


@pytest.fixture
def ip(store, tiny_llama):
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "llm_magic")
    shell.run_line_magic("llm", f"load {tiny_llama} --as hcllama --dtype float32")
    yield shell
    lm.get_manager().unload("hcllama")
    shell.run_line_magic("unload_ext", "llm_magic")
    shell.user_ns.pop("_llm", None)


def test_conversation_cells_history_rerun_and_resume(ip, capsys):
    ip.run_cell_magic("llm", "hcllama -n 6 --conversation talk", "What is a list?")
    first = ip.user_ns["_llm"]
    ip.run_cell_magic("llm", "-n 6 --conversation talk", "And a dict?")
    second = ip.user_ns["_llm"]
    assert (first.turn, second.turn) == (0, 1) and first.conversation == second.conversation
    capsys.readouterr()
    ip.run_line_magic("llm", "history --conversation talk")
    shown = capsys.readouterr().out
    assert shown.splitlines()[0].startswith("turn") and "And a dict?" in shown
    ip.run_line_magic("llm", f"history --conversation {first.conversation} -n 1")
    shown = capsys.readouterr().out
    assert "And a dict?" in shown and "What is a list?" not in shown
    ip.run_line_magic("llm", f"rerun {second.id}")
    assert "turn 1 of conversation" in capsys.readouterr().out
    assert lm.last().text == second.text
    ip.run_cell_magic("llm", f"-n 6 --conversation back --resume {second.id}", "Go on")
    resumed = ip.user_ns["_llm"]
    ip.run_cell_magic("llm", "-n 6 --conversation talk", "Go on")
    assert resumed.text == ip.user_ns["_llm"].text and resumed.turn == 2
    back = find("back")
    assert back is not None and back.messages[:4] == find("talk").messages[:4]
    for conv in ("talk", "back"):
        find(conv).forget()


@pytest.mark.parametrize("line, match", [
    ("--resume 1", "add --conversation NAME"),
    ("-c --resume 1", "add --conversation NAME"),
    ("hcllama --conversation x --resume 1", "drop MODEL"),
    ("--conversation x --resume one", "invalid int"),
    ("--conversation '<b>x</b>' --resume 1", "name is 1 to 64"),
    ("--conversation x --resume 999999", "no generation 999999"),
])
def test_bad_resume_cells_are_refused(ip, line, match):
    with pytest.raises(UsageError, match=match):
        ip.run_cell_magic("llm", line, "Go on")
    assert find("x") is None


def test_resume_cell_refuses_an_existing_name_and_a_plain_generation(ip):
    ip.run_cell_magic("llm", "hcllama -n 2 --conversation here", "Hi")
    turn = ip.user_ns["_llm"]
    ip.run_cell_magic("llm", "hcllama -n 2", "Not a turn")
    plain = ip.user_ns["_llm"]
    with pytest.raises(UsageError, match="exists in this kernel"):
        ip.run_cell_magic("llm", f"--conversation here --resume {turn.id}", "Go on")
    with pytest.raises(UsageError, match="is not a conversation's turn"):
        ip.run_cell_magic("llm", f"--conversation fresh --resume {plain.id}", "Go on")
    assert find("fresh") is None and len(find("here").turns) == 1
    for bad, match in (("'<b>x</b>'", r"named '<b>x</b>'"), ("nobody", "No conversation")):
        with pytest.raises(UsageError, match=match):
            ip.run_line_magic("llm", f"history --conversation {bad}")
    find("here").forget()
