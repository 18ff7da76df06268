"""History calls with hostile input: exact searches, numbers SQLite cannot hold, odd characters.

Each call gives a result or one clear line, and the file is left as it was.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import llm_magic as lm
from llm_magic.errors import InvalidOptionError
from llm_magic.generation import generate
from llm_magic.history import db, history, rerun
from llm_magic.history.recorder import _recorder, get

ODD = ["<b>bold</b> & <script>x()</script>", "a\x00b", "\u202eevil\u202c", "\x1b[31mred",
       "zero\u200bwidth", "\ufeffbom", "tab\there", "\U0001f600 smile", "100%_\\", "ÉCOLE"]


@pytest.fixture
def tiny(manager, tiny_gpt2):
    return manager.load(str(tiny_gpt2), name="tiny").name


@pytest.fixture
def odd_rows(store, manager, tiny) -> dict[str, int]:
    """One generation per odd prompt, and a plain one: their ids by prompt."""
    ids = {p: generate(p, max_new_tokens=2, manager=manager).id for p in ["plain text", *ODD]}
    _recorder.flush()
    return ids


def intact(path: Path, count: int) -> None:
    """The file passes SQLite's own check and holds ``count`` rows."""
    _recorder.flush()
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert con.execute("SELECT count(*) FROM generations").fetchone() == (count,)
    finally:
        con.close()


def one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message and "\n" not in message
    message.encode("utf-8")  # printable as it is: nothing unencodable in the message
    return message


# -- the search is exact ------------------------------------------------------------


def test_a_nul_in_a_search_matches_only_rows_that_hold_it(odd_rows):
    assert [r.prompt for r in history(search="\x00")] == ["a\x00b"]
    assert [r.prompt for r in history(search="A\x00B")] == ["a\x00b"]  # ASCII case kept
    assert history(search="\x00\x00") == ()
    assert history(search="a\x00c") == ()


@pytest.mark.parametrize("text", ODD)
def test_every_odd_text_finds_exactly_its_own_row(odd_rows, store, text):
    found = history(None, search=text)
    assert [r.id for r in found] == [odd_rows[text]], text
    intact(store, len(odd_rows))


def test_the_search_keeps_its_case_rules(odd_rows):
    # As documented (and as LIKE did): ASCII letters in any case, other letters as written.
    assert [r.prompt for r in history(search="PLAIN TEXT")] == ["plain text"]
    assert [r.prompt for r in history(search="<SCRIPT>")] == [ODD[0]]
    assert [r.prompt for r in history(search="école")] == []
    assert [r.prompt for r in history(search="École")] == ["ÉCOLE"]
    assert [r.prompt for r in history(search="%_\\")] == ["100%_\\"]
    assert history(search="_x") == () and history(search="%%") == ()


def test_a_search_that_cannot_be_encoded_is_refused_in_one_line(odd_rows, store):
    for text in ("\ud800", "a \udfff b", "\ud83d\ude00"):
        with pytest.raises(InvalidOptionError) as info:
            history(search=text)
        message = one_line(info.value)
        assert "The search text has a lone surrogate" in message
        assert "not recorded" not in message and "failed" not in message
    with pytest.raises(InvalidOptionError, match=r"lone surrogate U\+DC80 at character 0"):
        history(model="\udc80")
    intact(store, len(odd_rows))


def test_wrong_types_of_search_and_model_say_what_they_got(store):
    for value, kind in ((b"x", "bytes"), (3, "int"), (["a"], "list")):
        with pytest.raises(InvalidOptionError, match=f"search text must be a string, not {kind}"):
            history(search=value)  # type: ignore[arg-type]
        with pytest.raises(InvalidOptionError, match=f"model name must be a string, not {kind}"):
            history(model=value)  # type: ignore[arg-type]


def test_the_table_writes_out_control_and_bidi_characters(odd_rows):
    table = history(None)
    shown, html = str(table), table._repr_html_()
    for raw in ("\x1b", "\u202e", "\u202c", "\x00"):
        assert raw not in shown and raw not in html
    assert "\\x1b[31mred" in shown and "\\u202eevil\\u202c" in shown and "a\\x00b" in shown
    assert "&lt;script&gt;" in html and "<script>" not in html


# -- numbers SQLite cannot hold ----------------------------------------------------------


BAD_NUMBERS = [0, -1, True, False, 1.0, "3", None, 2**63, 2**64, -(2**63), 10**5000]


def number_id(value: object) -> str:
    """A test id (pytest cannot print an integer past 4,300 digits either)."""
    return "10**5000" if value == 10**5000 else repr(value)


@pytest.mark.parametrize("value", BAD_NUMBERS, ids=number_id)
def test_a_bad_id_is_refused_before_the_database(store, manager, tiny, value):
    g = generate("Hello", max_new_tokens=2, manager=manager)
    for call in (get, rerun):
        with pytest.raises(InvalidOptionError) as info:
            call(value)  # type: ignore[arg-type]
        message = one_line(info.value)
        assert message.startswith("A generation id must be a positive integer of at most "
                                  "2**63 - 1, not ")
        assert "not recorded" not in message and "failed" not in message
    intact(store, 1)
    assert get(g.id).prompt == "Hello"


@pytest.mark.parametrize("value", [v for v in BAD_NUMBERS if v is not None], ids=number_id)
def test_a_bad_count_is_refused_before_the_database(store, value):
    with pytest.raises(InvalidOptionError) as info:
        history(value)  # type: ignore[arg-type]
    message = one_line(info.value)
    assert "must be a positive integer of at most 2**63 - 1" in message
    assert "not recorded" not in message and "failed" not in message


def test_the_largest_numbers_sqlite_holds_work(store, manager, tiny):
    import numpy as np

    g = generate("Hello", max_new_tokens=2, manager=manager)
    assert [r.id for r in history(2**63 - 1)] == [g.id]
    assert [r.id for r in history(np.int64(1))] == [g.id]  # type: ignore[arg-type]
    assert get(np.int64(g.id)).id == g.id  # type: ignore[arg-type]
    with pytest.raises(db.HistoryError, match=f"no generation {2**63 - 1} .*latest is {g.id}"):
        rerun(2**63 - 1)


# -- reading fails: a message of its own -------------------------------------------------


def test_a_row_that_is_not_utf8_reads_with_replacement_characters(store, manager, tiny):
    g = generate("Hello", max_new_tokens=2, manager=manager)
    _recorder.flush()
    con = sqlite3.connect(store)  # another program writes a prompt that is not UTF-8
    con.execute("UPDATE generations SET prompt = CAST(x'61ff62' AS TEXT) WHERE id = ?", (g.id,))
    con.commit()
    con.close()
    assert [r.prompt for r in history()] == ["a\ufffdb"]  # one bad row hides nothing
    assert rerun(g.id, manager=manager).original.prompt == "a\ufffdb"
    intact(store, 2)


def test_a_damaged_file_read_says_it_was_a_read(store, manager, tiny):
    junk = b"not a database " * 100
    store.write_bytes(junk)
    with pytest.raises(db.HistoryError) as info:
        history()
    message = one_line(info.value)
    assert message.startswith(f"Reading the history at {store} failed (")
    assert "damaged" in message and "not recorded" not in message
    assert store.read_bytes() == junk


# -- the magics ---------------------------------------------------------------------------


@pytest.fixture
def ip(tiny_gpt2, store):
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "llm_magic")
    shell.run_line_magic("llm", f"load {tiny_gpt2} --as hitiny")
    yield shell
    lm.get_manager().unload("hitiny")
    shell.run_line_magic("unload_ext", "llm_magic")
    shell.user_ns.pop("_llm", None)


def usage_error(ip: InteractiveShell, line: str) -> str:
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("llm", line)
    assert type(info.value) is UsageError
    return one_line(info.value)


def test_history_and_rerun_magics_refuse_hostile_input_in_one_line(ip, store, capsys):
    ip.run_cell_magic("llm", "hitiny -n 2", "a\x00b")
    ip.run_cell_magic("llm", "hitiny -n 2", "plain")
    capsys.readouterr()
    ip.run_line_magic("llm", "history --search \x00")
    shown = capsys.readouterr().out
    assert "a\\x00b" in shown and "plain" not in shown
    for line in ("history -n 9223372036854775808", "rerun 9223372036854775808",
                 "rerun 99999999999999999999999999999", "history -n 0", "rerun 0"):
        message = usage_error(ip, line)
        assert "positive integer of at most 2**63 - 1" in message, line
    message = usage_error(ip, "history --search \ud800")
    assert message.startswith("The search text has a lone surrogate U+D800 at character 0")
    ip.run_line_magic("llm", "history --search '<script>'")
    assert "No generation recorded" in capsys.readouterr().out
    intact(store, 2)
