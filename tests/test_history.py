"""The history store on real SQLite files, real tiny models and real processes."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from html import escape
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import llm_magic as lm
from llm_magic.backends.base import TokenRecord
from llm_magic.errors import (
    InvalidOptionError,
    LLMMagicWarning,
    ModelNotLoadedError,
    PromptTooLongError,
)
from llm_magic.events import EventBus
from llm_magic.generation import (
    Generation,
    GenerationStats,
    PendingGeneration,
    branch,
    generate,
    generate_batch,
    make_request,
)
from llm_magic.history import HistoryRow, HistoryTable, configure, db, history, rerun
from llm_magic.history import settings as history_settings
from llm_magic.history.read import decode_records, encode_records, redact
from llm_magic.history.recorder import get
from llm_magic.manager import ModelInfo

CHILD = str(Path(__file__).with_name("_history_child.py"))
HISTORY = sys.modules["llm_magic.history.recorder"]


# -- fixtures -------------------------------------------------------------------


@pytest.fixture
def tiny(manager, tiny_gpt2):
    return manager.load(str(tiny_gpt2), name="tiny").name


@pytest.fixture(scope="module")
def long_model(tmp_path_factory) -> Path:
    """A tiny model with a long context and an end token it never emits: it runs until stopped."""
    from _models import build_tiny_model

    out = build_tiny_model(tmp_path_factory.mktemp("long"), arch="llama", context=16384)
    for name in ("config.json", "generation_config.json"):
        config = json.loads((out / name).read_text())
        config["eos_token_id"] = 10**6
        (out / name).write_text(json.dumps(config))
    return out


def rows(path: Path, where: str = "1") -> list[sqlite3.Row]:
    """Read the file directly, as another program would (once this process's writes are done)."""
    HISTORY._recorder.flush()
    con = sqlite3.connect(path)
    con.row_factory = sqlite3.Row
    try:
        return con.execute(f"SELECT * FROM generations WHERE {where} ORDER BY id").fetchall()
    finally:
        con.close()


def child(role: str, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    return subprocess.Popen([sys.executable, CHILD, role, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kwargs)


def namespace_works() -> bool:
    """Whether this machine lets a process have its own mounts (a user and mount namespace)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    probe = subprocess.run([unshare, "--user", "--map-root-user", "--mount", "true"],
                           capture_output=True)
    return probe.returncode == 0


def in_namespace(mounts: str, role: str, *args: str) -> subprocess.CompletedProcess:
    """Run the child after ``mounts`` (shell commands) in a namespace of its own."""
    script = f'{mounts} && exec "$0" "$@"'
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script,
                           sys.executable, CHILD, role, *args], capture_output=True, text=True,
                          env=env, timeout=300)


# -- recording -------------------------------------------------------------------


def test_every_generation_is_one_row_with_what_made_it(store, manager, tiny, tiny_gpt2):
    pieces: list[str] = []
    g = generate("The import statement", max_new_tokens=12, temperature=0.7, top_k=20, seed=5,
                 system="Be brief.", stream=pieces.append, manager=manager)
    assert isinstance(g.id, int)
    row = get(g.id)
    assert isinstance(row, HistoryRow)
    assert (row.status, row.error, row.output, row.prompt) == ("ok", None, g.text, g.prompt)
    assert (row.model, row.source, row.backend, row.dtype, row.device) == (
        "tiny", str(tiny_gpt2), "hf", "float32", "cpu")
    assert (row.seed, row.system, row.new_tokens) == (5, "Be brief.", g.stats.new_tokens)
    assert row.prompt_tokens == g.stats.prompt_tokens
    assert row.params["temperature"] == 0.7 and row.params["top_k"] == 20
    assert row.params["max_new_tokens"] == 12 and row.params["stop"] == []
    assert row.duration == pytest.approx(g.stats.duration)
    assert row.time_to_first_token == pytest.approx(g.stats.time_to_first_token)
    assert row.tokens_per_second == pytest.approx(g.stats.tokens_per_second)
    assert row.stop_reason == g.stats.stop_reason
    assert row.started_at <= row.ended_at <= time.time()
    import torch
    import transformers

    assert row.llm_magic_version == lm.__version__
    assert row.torch_version == torch.__version__
    assert row.transformers_version == transformers.__version__
    assert [r["id"] for r in rows(store)] == [g.id]


def test_the_file_is_wal_and_at_the_latest_schema(store, manager, tiny):
    generate("Hello", max_new_tokens=2, manager=manager)
    con = sqlite3.connect(store)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA user_version").fetchone()[0] == len(db.MIGRATIONS)
    con.close()


def test_ids_grow_and_generations_without_streaming_are_recorded_too(store, manager, tiny):
    gens = [generate(f"Prompt {i}", max_new_tokens=3, manager=manager) for i in range(3)]
    assert [g.id for g in gens] == sorted(g.id for g in gens)
    assert [r["output"] for r in rows(store)] == [g.text for g in gens]
    assert lm.history(2)[0].id == gens[-1].id


def test_a_file_deleted_meanwhile_is_made_again(store, manager, tiny):
    generate("Hello", max_new_tokens=2, manager=manager)
    HISTORY._recorder.flush()
    for p in list(store.parent.glob("history.sqlite*")):
        p.unlink()
    g = generate("Again", max_new_tokens=2, manager=manager)
    assert g.id == 1 and [r["prompt"] for r in rows(store)] == ["Again"]


def test_partial_output_is_written_while_it_runs(store, manager, long_model):
    manager.load(str(long_model), name="long")
    stop = threading.Event()
    seen: list[sqlite3.Row] = []
    pieces: list[str] = []
    started = time.monotonic()

    def sink(text: str) -> None:
        pieces.append(text)
        if seen or time.monotonic() - started < 0.5:
            return
        running = rows(store, "status = 'running' AND output != ''")
        if running:
            seen.extend(running)
            stop.set()

    g = generate("On and on", max_new_tokens=15000, stream=sink, stop_event=stop,
                 manager=manager)
    assert seen, "no partial output was written while the generation ran"
    assert seen[0]["id"] == g.id and seen[0]["new_tokens"] > 0
    assert g.text.startswith(seen[0]["output"])
    row = get(g.id)
    assert (row.status, row.output, row.stop_reason) == ("interrupted", g.text, "interrupted")


def test_a_kernel_interrupt_leaves_an_interrupted_row(store, manager, long_model):
    import _thread

    manager.load(str(long_model), name="long")
    timer = threading.Timer(0.5, _thread.interrupt_main)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        generate("On and on", max_new_tokens=15000, stream=lambda s: None, manager=manager)
    timer.join()
    partial = manager.last_generation
    assert partial is not None and partial.id is not None
    row = get(partial.id)
    assert row.status == "interrupted" and row.output == partial.text and row.new_tokens > 0


def test_a_generation_whose_sink_raised_is_ended_by_the_next_one(store, manager, tiny):
    def sink(text: str) -> None:
        raise ValueError("the display broke")

    with pytest.raises(ValueError, match="display broke"):
        generate("Broken sink", max_new_tokens=5, stream=sink, manager=manager)
    (orphan,) = rows(store)
    assert orphan["status"] == "running"  # nothing ended it
    for worker in threading.enumerate():  # the exception did not stop the worker: let it end
        if worker.name == "llm_magic-tiny":
            worker.join(30)
    generate("Next", max_new_tokens=2, manager=manager)
    broken, following = rows(store)
    assert (broken["status"], following["status"]) == ("error", "ok")
    assert "raised" in broken["error"] and broken["ended_at"]


def test_a_batch_is_one_row_per_prompt(store, manager, tiny):
    gens = generate_batch(["A list", "A dict"], max_new_tokens=3, manager=manager)
    assert [get(g.id).output for g in gens] == [g.text for g in gens]
    assert [get(g.id).prompt for g in gens] == ["A list", "A dict"]


def test_a_failed_batch_is_recorded_as_an_error(store, manager, tiny):
    with pytest.raises(PromptTooLongError):
        generate_batch(["short", "word " * 300], max_new_tokens=3, manager=manager)
    failed = rows(store)
    assert [r["status"] for r in failed] == ["error", "error"]
    assert "at most 128" in failed[0]["error"]


def test_history_off_records_nothing(store, manager, tiny, monkeypatch):
    configure(enabled=False)
    g = generate("Hello", max_new_tokens=2, manager=manager)
    assert g.id is None and not store.exists()
    monkeypatch.setenv("LLM_MAGIC_HISTORY", "off")
    configure(reset=True)
    assert not history_settings().enabled
    assert generate("Hello", max_new_tokens=2, manager=manager).id is None
    configure(enabled=True, path=store)  # an explicit setting wins over the variable
    assert generate("Hello", max_new_tokens=2, manager=manager).id == 1


def test_where_the_database_lives(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("LLM_MAGIC_HISTORY")
    try:
        configure(reset=True)
        now = history_settings()
        assert (now.origin, now.path) == ("default", tmp_path / "data/llm_magic/history.sqlite")
        monkeypatch.setenv("LLM_MAGIC_HISTORY", str(tmp_path / "env.sqlite"))
        assert (history_settings().origin, history_settings().path) == (
            "LLM_MAGIC_HISTORY", tmp_path / "env.sqlite")
        configure(path=tmp_path / "mine.sqlite")
        assert history_settings().path == tmp_path / "mine.sqlite"
        assert "mine.sqlite" in str(history_settings())
    finally:
        configure(reset=True)


def test_bad_settings_are_refused():
    with pytest.raises(InvalidOptionError):
        configure(enabled="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError):
        configure(flush_interval=0)


def test_secrets_never_reach_the_file(store):
    bus = EventBus()
    info = ModelInfo(name="served", source="https://me:sk-SECRET1@example.test/v1?api_key=sk-SECRET2",
                     backend="openai", device="remote", dtype="-", parameters=0, memory=0)
    pending = PendingGeneration("Hi", "served", make_request("Hi"), info, time.time())
    bus.emit("generation_start", "served", generation=pending)
    assert pending.id is not None
    stats = GenerationStats(1, 0, None, None, 0.1, "length")
    bus.emit("generation_end", "served", error=None,
             generation=Generation("", "Hi", "served", stats, id=pending.id))
    HISTORY._recorder.flush()
    data = b"".join(p.read_bytes() for p in store.parent.iterdir() if p.is_file())
    assert b"SECRET" not in data and b"example.test/v1" in data
    assert rows(store)[0]["source"] == "https://example.test/v1?api_key=REDACTED"
    assert redact("http://localhost:8000/v1?model=x&token=abc") == (
        "http://localhost:8000/v1?model=x&token=REDACTED")
    assert redact("demo") == "demo"


# -- reading ---------------------------------------------------------------------


def test_history_filters_and_renders(store, manager, tiny):
    for prompt in ("A <b>list</b>", "A dict", "100% sure_thing"):
        generate(prompt, max_new_tokens=3, manager=manager)
    table = history()
    assert isinstance(table, HistoryTable) and len(table) == 3
    assert [r.prompt for r in table] == ["100% sure_thing", "A dict", "A <b>list</b>"]
    assert [r.prompt for r in history(search="LIST")] == ["A <b>list</b>"]
    assert [r.prompt for r in history(search="0% s")] == ["100% sure_thing"]
    assert history(search="%") and not history(search="_x")
    assert len(history(1)) == 1 and history(model="nope") == ()
    assert "A dict" in str(table) and "status" in str(table)
    html = table._repr_html_()
    assert "&lt;b&gt;list&lt;/b&gt;" in html and "<b>list" not in html
    assert "matches" in str(history(model="nope"))
    configure(path=store.with_name("none-yet.sqlite"))
    assert "No generations recorded" in str(history()) and "yet" in history()._repr_html_()
    for bad in (0, -1, True, "3"):
        with pytest.raises(InvalidOptionError):
            history(bad)  # type: ignore[arg-type]


def test_get_an_unknown_id_says_what_there_is(store, manager, tiny):
    g = generate("Hello", max_new_tokens=2, manager=manager)
    with pytest.raises(db.HistoryError, match=f"no generation 999.*latest is {g.id}"):
        get(999)


# -- rerun -------------------------------------------------------------------------


@pytest.mark.parametrize("options", [
    {"temperature": 0.0},
    {"temperature": 1.0, "seed": 7},
    {"temperature": 0.9, "top_p": 0.8, "top_k": 30, "seed": 11, "stop": ["zz"]},
])
def test_rerun_reproduces_greedy_and_seeded(store, manager, tiny, options):
    g = generate("The import statement", max_new_tokens=16, manager=manager, **options)
    generate("Something else in between", max_new_tokens=16, temperature=1.0, seed=1,
             manager=manager)
    again = rerun(g.id, manager=manager)
    assert again.matches and again.generation.text == g.text and again.notes == ()
    assert again.generation.id not in (None, g.id)
    assert "matches" in str(again)


def test_rerun_says_when_it_differs_and_why(store, manager, tiny):
    g = generate("The import statement", max_new_tokens=16, temperature=1.0, manager=manager)
    HISTORY._recorder.flush()  # the end of the row is written first, then changed here
    con = sqlite3.connect(store)
    with con:
        # Starts with what no sample starts with (an unseeded one may well start with "n").
        con.execute("UPDATE generations SET output = '\u2603\u2603 not what it said', "
                    "torch_version = '1.0.0' WHERE id = ?", (g.id,))
    con.close()
    again = rerun(g.id, manager=manager)
    assert not again.matches and again.first_difference == 0
    text = str(again)
    assert "differs" in text and "torch 1.0.0 then" in text and "without a seed" in text
    page = again._repr_html_()
    assert escape(again.generation.text) in page and "not what it said" in page


def test_rerun_says_what_to_load(store, manager, tiny, tiny_llama, tiny_gpt2):
    g = generate("Hello", max_new_tokens=4, manager=manager)
    manager.unload("tiny")
    with pytest.raises(ModelNotLoadedError, match=r"lm.load\(.*name='tiny'\)") as caught:
        rerun(g.id, manager=manager)
    assert str(tiny_gpt2) in str(caught.value) and "%llm load" in str(caught.value)
    manager.load(str(tiny_llama), name="tiny")
    with pytest.raises(ModelNotLoadedError, match="reload"):
        rerun(g.id, manager=manager)
    manager.unload("tiny")
    manager.load(str(tiny_gpt2), name="other")  # the same model under another name will do
    assert rerun(g.id, manager=manager).generation.model == "other"


# -- token records and branches ----------------------------------------------------


def blob_size(n: int, k: int, table: bytes) -> int:
    """The documented layout: a 12-byte header, (1 + K) int32 ids and float32 log-probs,
    an int32 rank and a float32 entropy per token, then the texts."""
    return 12 + n * (8 * (1 + k) + 8) + len(table)


def table_of(blob: bytes, n: int, k: int) -> bytes:
    return blob[12 + n * (8 * (1 + k) + 8):]


def test_records_round_trip_through_the_compact_form():
    inf = float("-inf")
    records = (
        TokenRecord(7, " the", -0.25, 1, ((7, " the", -0.25), (9, "\\xe2", -1.5),
                                          (11, "<b>", -2.0)), 0.75),
        TokenRecord(9, "\\xe2", -1.5, 3, ((3, "naïve", -0.5), (4, "naïve", -1.0),
                                            (9, "\\xe2", -1.5)), None),  # two ids, one text
        TokenRecord(None, "served", -3.0, None, ((None, "served", -3.0), (None, "x", inf))),
        TokenRecord(5, "\n", -0.5, 1, ((5, "\n", -0.5),), 0.0),  # fewer than K alternatives
    )
    blob = encode_records(records, 3)
    assert decode_records(blob) == records
    assert len(blob) == blob_size(4, 3, table_of(blob, 4, 3))
    table = json.loads(table_of(blob, 4, 3))  # each id's text once; nameless ones by text
    assert sorted(i for i, _ in table) == [-3, -2, 3, 4, 5, 7, 9, 11]
    assert decode_records(encode_records((), 5)) == ()
    with pytest.raises(ValueError, match="not token records"):
        decode_records(b"XXXX" + blob[4:])


def test_records_are_stored_compactly_and_read_back_equal(store, manager, tiny):
    g = generate("The import statement", max_new_tokens=12, logprobs=5, manager=manager)
    (raw,) = rows(store)
    assert (raw["logprobs"], raw["logprobs_mode"], raw["parent"], raw["branch_at"]) == (
        5, "raw", None, None)
    blob = raw["tokens"]
    assert len(blob) == blob_size(12, 5, table_of(blob, 12, 5))
    assert len(blob) - len(table_of(blob, 12, 5)) - 12 == 56 * 12  # 56 bytes a token at K=5
    row = get(g.id)
    assert row.tokens == g.tokens  # float32 in, float32 out: nothing lost
    assert row.tokens is row.tokens  # decoded once, on first use
    assert (row.logprobs, row.logprobs_mode) == (5, "raw")
    assert "token_blob" not in repr(row)
    plain = generate("Hello", max_new_tokens=3, manager=manager)
    row = get(plain.id)
    assert (row.tokens, row.logprobs, row.logprobs_mode, row.parent) == (None, None, None, None)


def test_sampled_records_and_a_batch_are_stored(store, manager, tiny):
    g = generate("The import statement", max_new_tokens=8, temperature=0.8, top_k=5, seed=4,
                 logprobs=8, logprobs_mode="sampled", manager=manager)
    row = get(g.id)
    assert row.tokens == g.tokens and row.logprobs_mode == "sampled"
    assert any(lp == float("-inf") for r in row.tokens for _, _, lp in r.top)  # cut by top-k
    gens = generate_batch(["A list", "A dict"], max_new_tokens=4, logprobs=2, manager=manager)
    assert [get(x.id).tokens for x in gens] == [x.tokens for x in gens]


@pytest.mark.parametrize("options", [
    {"temperature": 0.0, "logprobs": 5},
    {"temperature": 0.9, "top_k": 30, "seed": 3, "logprobs": 4, "logprobs_mode": "sampled"},
])
def test_rerun_repeats_the_records_and_says_they_match(store, manager, tiny, options):
    g = generate("The import statement", max_new_tokens=10, manager=manager, **options)
    again = rerun(g.id, manager=manager)
    new = again.generation
    assert again.matches and again.records_match and again.first_record_difference is None
    assert new.params["logprobs"] == options["logprobs"]
    assert new.logprobs_mode == options.get("logprobs_mode", "raw")
    assert [r.id for r in new.tokens] == [r.id for r in g.tokens]
    assert "token records match too" in str(again)
    plain = rerun(generate("Hello", max_new_tokens=3, manager=manager).id, manager=manager)
    assert plain.records_match is None and "records" not in str(plain)


def test_rerun_says_where_the_records_differ(store, manager, tiny):
    g = generate("The import statement", max_new_tokens=10, logprobs=3, manager=manager)
    changed = list(g.tokens)
    changed[4] = dataclasses.replace(changed[4], logprob=changed[4].logprob - 0.01)
    close = list(g.tokens)
    close[2] = dataclasses.replace(close[2], logprob=close[2].logprob + 5e-5)  # within 1e-4
    HISTORY._recorder.flush()  # the end of the row is written first, then changed here
    for records, expected in ((close, None), (changed, 4)):
        con = sqlite3.connect(store)
        with con:
            con.execute("UPDATE generations SET tokens = ? WHERE id = ?",
                        (encode_records(records, 3), g.id))
        con.close()
        again = rerun(g.id, manager=manager)
        assert again.matches and again.first_record_difference == expected
    assert again.records_match is False
    text = str(again)
    assert "token records differ from token 4 on" in text and "then id" in text
    assert "✗" in again._repr_html_()


def test_a_branch_is_recorded_with_its_parent_and_reruns_as_a_branch(store, manager, tiny):
    g = generate("The import statement", max_new_tokens=10, temperature=0.9, top_k=40, seed=6,
                 logprobs=4, manager=manager)
    b = branch(g, 3, g.tokens[3].top[1][0], manager=manager)
    c = branch(b, 7, b.tokens[7].top[2][0], manager=manager)  # a branch of a branch
    last = branch(g, 9, g.tokens[9].top[1][0], manager=manager)  # nothing left to generate
    for gen, parent, at in ((b, g.id, 3), (c, b.id, 7), (last, g.id, 9)):
        row = get(gen.id)
        assert (row.parent, row.branch_at, row.tokens) == (parent, at, gen.tokens)
        assert row.output == gen.text
        again = rerun(gen.id, manager=manager)
        assert again.matches and again.records_match, str(again)
        new = again.generation
        assert (new.parent, new.branch_at) == (parent, at) and new.id != gen.id
        assert [r.id for r in new.tokens] == [r.id for r in gen.tokens]
        assert f"a branch of generation {parent} at token {at}" in str(again)
    children = [r["id"] for r in rows(store, f"parent = {g.id}")]
    assert b.id in children and last.id in children


def test_a_branch_whose_parent_is_gone_says_so(store, manager, tiny):
    g = generate("The import statement", max_new_tokens=6, logprobs=2, manager=manager)
    b = branch(g, 2, g.tokens[2].top[1][0], manager=manager)
    HISTORY._recorder.flush()
    con = sqlite3.connect(store)
    with con:
        con.execute("DELETE FROM generations WHERE id = ?", (g.id,))
    con.close()
    with pytest.raises(db.HistoryError, match=rf"branch of generation {g.id}, which is no "
                                              "longer in the history.*g.branch"):
        rerun(b.id, manager=manager)


def test_an_interrupted_generation_keeps_records_of_its_partial_output(store, manager,
                                                                       long_model):
    manager.load(str(long_model), name="long")
    stop = threading.Event()
    pieces: list[str] = []

    def receive(piece: str) -> None:  # the first drain's text (one piece per 50 ms drain)
        pieces.append(piece)
        stop.set()

    # 1,000 tokens take seconds even on a fast machine; the stop comes after the first drain.
    g = generate("Hello", model="long", max_new_tokens=1000, temperature=1.0, seed=2, logprobs=3,
                 stream=receive, stop_event=stop, manager=manager)
    assert g.interrupted and 0 < len(g.tokens) < 1000
    row = get(g.id)
    assert row.status == "interrupted" and row.tokens == g.tokens
    assert row.new_tokens == len(row.tokens)
    again = rerun(g.id, manager=manager)
    assert len(again.generation.tokens) == 1000
    assert again.matches and again.records_match  # the partial records start the rerun's


# -- migrations --------------------------------------------------------------------


def test_migrations_from_an_empty_file(tmp_path):
    path = tmp_path / "empty.sqlite"
    path.touch()
    con = db.connect(path)
    assert db.version_of(con) == len(db.MIGRATIONS)
    columns = [r[1] for r in con.execute("PRAGMA table_info(generations)")]
    assert columns == list(db.COLUMNS)
    indexes = {r[1] for r in con.execute("PRAGMA index_list(generations)")}
    assert {"generations_model", "generations_started", "generations_parent"} <= indexes
    assert db.migrate(con) == len(db.MIGRATIONS)  # a second time is a no-op
    con.close()


@pytest.mark.parametrize("version", range(1, len(db.MIGRATIONS)))
def test_migrations_from_every_earlier_version(tmp_path, version):
    path = tmp_path / f"v{version}.sqlite"
    old = db.connect(path, db.MIGRATIONS[:version])
    assert db.version_of(old) == version
    row_id = db.insert(old, {"started_at": 1.0, "model": "m", "prompt": "kept", "output": "out",
                             "status": "ok", "params": {"seed": 3}})
    old.close()
    con = db.connect(path)
    assert db.version_of(con) == len(db.MIGRATIONS)
    (got,) = db.select(con, row_id=row_id)
    row = HistoryRow.from_db(dict(zip(db.COLUMNS, got, strict=True)))
    assert (row.prompt, row.output, row.status, row.params) == ("kept", "out", "ok", {"seed": 3})
    assert (row.tokens, row.logprobs, row.parent, row.branch_at) == (None, None, None, None)
    # The new columns take what a generation with records and a parent writes.
    records = (TokenRecord(1, "a", -0.5, 1, ((1, "a", -0.5), (2, "b", -1.0)), 0.75),)
    child_id = db.insert(con, {"started_at": 2.0, "model": "m", "prompt": "p"})
    db.complete(con, child_id, {"status": "ok", "logprobs": 2, "logprobs_mode": "raw",
                                "tokens": encode_records(records, 2), "parent": row_id,
                                "branch_at": 0})
    (got,) = db.select(con, row_id=child_id)
    child = HistoryRow.from_db(dict(zip(db.COLUMNS, got, strict=True)))
    assert (child.tokens, child.parent, child.branch_at, child.logprobs) == (records, row_id, 0, 2)
    con.close()


def test_two_processes_migrating_one_new_file_at_once(tmp_path):
    path = tmp_path / "race.sqlite"
    code = ("import sys; from pathlib import Path; from llm_magic.history import db;"
            "db.connect(Path(sys.argv[1])).close()")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)]) for _ in range(4)]
    assert [p.wait(60) for p in procs] == [0, 0, 0, 0]
    con = db.connect(path)
    assert db.version_of(con) == len(db.MIGRATIONS)
    con.close()


def test_a_newer_schema_is_left_alone_with_one_warning(store, manager, tiny):
    con = sqlite3.connect(store)
    con.execute("PRAGMA user_version = 99")
    con.close()
    with pytest.warns(LLMMagicWarning, match="newer llm_magic") as caught:
        first = generate("Hello", max_new_tokens=2, manager=manager)
        second = generate("Hello", max_new_tokens=2, manager=manager)
    assert len(caught) == 1 and first.id is None and second.id is None and second.text
    assert db.version_of(sqlite3.connect(store)) == 99
    with pytest.raises(db.HistoryError, match="newer"):
        history()


# -- nothing lost --------------------------------------------------------------------


def test_a_damaged_file_gives_one_warning_and_is_not_touched(store, manager, tiny):
    junk = b"this is not a database, but a user's file " * 200
    store.write_bytes(junk)
    with pytest.warns(LLMMagicWarning, match="damaged or not an SQLite file") as caught:
        gens = [generate("Hello", max_new_tokens=3, manager=manager) for _ in range(2)]
    assert len(caught) == 1 and all(g.id is None and g.text for g in gens)
    assert store.read_bytes() == junk
    with pytest.raises(db.HistoryError, match="damaged"):
        history()
    moved = store.with_suffix(".old")
    store.rename(moved)
    configure(path=store)  # a change of settings tries again: a new file is made
    assert generate("Hello", max_new_tokens=3, manager=manager).id == 1


def test_a_read_only_file_gives_one_warning(store, manager, tiny, tiny_gpt2):
    first = generate("Before", max_new_tokens=3, manager=manager)
    HISTORY._recorder.flush()
    HISTORY._recorder.close()
    if os.geteuid() != 0:  # a file mode stops anyone but root
        for p in store.parent.iterdir():
            p.chmod(0o444)
        store.parent.chmod(0o555)
        try:
            with pytest.warns(LLMMagicWarning, match="cannot be written") as caught:
                gens = [generate(f"Read-only {i}", max_new_tokens=3, manager=manager)
                        for i in range(2)]
        finally:
            store.parent.chmod(0o755)
        assert len(caught) == 1 and all(g.id is None and g.text for g in gens)
    else:  # root writes anywhere, except on a read-only mount
        assert namespace_works(), "neither a non-root user nor a mount namespace to test with"
        where = store.parent
        done = in_namespace(f"mount --bind {where} {where} && mount -o remount,bind,ro {where}",
                            "readonly", str(store), str(tiny_gpt2))
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout.splitlines()[-1])
        assert out["ids"] == [None, None] and all(out["tokens"])
        assert len(out["warnings"]) == 1 and "cannot be written" in out["warnings"][0]
    assert [r["id"] for r in rows(store)] == [first.id]


@pytest.mark.skipif(not namespace_works(), reason="needs a mount namespace for a small tmpfs")
def test_a_full_disk_gives_one_warning_and_history_resumes(tmp_path, tiny_gpt2, long_model):
    where = tmp_path / "small-disk"
    where.mkdir()
    done = in_namespace(f"mount -t tmpfs -o size=512k tmpfs {where}", "full",
                        str(where / "history.sqlite"), str(tiny_gpt2), str(long_model))
    assert done.returncode == 0, done.stderr
    out, mid = (json.loads(line) for line in done.stdout.splitlines()[-2:])
    first, full1, full2, after = out["ids"]
    assert (first, full1, full2) == (1, None, None) and all(out["tokens"])
    assert after == 2
    assert len(out["warnings"]) == 1 and "is full" in out["warnings"][0]
    assert [tuple(r) for r in out["rows"]] == [(2, "After freeing space", "ok"),
                                              (1, "Before the disk is full", "ok")]
    # full while a generation runs: one warning (from the writer thread, given in the
    # caller's), the row keeps its last partial output, and history resumes after
    assert mid["ids"] == [3, 4]
    assert len(mid["warnings"]) == 1 and "is full" in mid["warnings"][0]
    (last_id, last_prompt, last_status, _), (long_id, long_prompt, status, partial) = \
        mid["rows"][:2]
    assert (last_id, last_prompt, last_status) == (4, "Space again", "ok")
    assert (long_id, long_prompt, status) == (3, "Fills the disk", "running")
    assert partial and mid["text"].startswith(partial)


def test_a_file_another_program_keeps_locked_costs_one_warning(store, manager, tiny):
    first = generate("Before", max_new_tokens=2, manager=manager)
    HISTORY._recorder.flush()
    other = sqlite3.connect(store, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock, like a stuck tool would
    try:
        with pytest.warns(LLMMagicWarning, match="locked by another program") as caught:
            gens = [generate("While locked", max_new_tokens=2, manager=manager)
                    for _ in range(2)]
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert len(caught) == 1 and [g.id for g in gens] == [None, None]
    assert all(g.stats.new_tokens == 2 for g in gens)
    assert generate("After", max_new_tokens=2, manager=manager).id == first.id + 1


def test_sigkill_during_a_long_generation_loses_nothing(tmp_path, long_model):
    path = tmp_path / "killed.sqlite"
    proc = child("kill", str(path), str(long_model))
    assert proc.stdout is not None
    earlier = []
    try:
        for line in proc.stdout:
            item = json.loads(line)
            if item == "LONG":
                break
            earlier.append(item)
        deadline = time.monotonic() + 120
        running: list[sqlite3.Row] = []
        while not running and time.monotonic() < deadline:
            time.sleep(0.1)
            running = rows(path, "status = 'running' AND new_tokens > 20 AND output != ''")
        assert running, "the long generation never showed partial output"
        proc.send_signal(signal.SIGKILL)
        streamed = "".join(json.loads(line) for line in proc.stdout)
    finally:
        proc.kill()
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    con.close()
    after = rows(path)
    assert [(r["id"], r["status"], r["output"]) for r in after[:3]] == [
        (e["id"], "ok", e["text"]) for e in earlier]
    killed = after[3]
    assert len(after) == 4 and killed["status"] == "running" and killed["ended_at"] is None
    assert killed["prompt"] == "The long one" and killed["new_tokens"] >= running[0]["new_tokens"]
    assert len(killed["output"]) >= len(running[0]["output"])
    assert streamed.startswith(killed["output"])


def test_an_exit_during_a_generation_leaves_it_interrupted(tmp_path, long_model):
    path = tmp_path / "exited.sqlite"
    proc = child("exit", str(path), str(long_model))
    out, err = proc.communicate(timeout=300)
    # (torch may abort the interpreter's last step when a daemon thread is still inside it;
    # the exit handlers, history's among them, have run by then)
    assert out.splitlines()[-1] == '"exiting"', err
    (row,) = rows(path)
    assert (row["prompt"], row["status"], row["error"]) == ("Cut by the exit", "interrupted", None)
    assert row["output"] and row["new_tokens"] > 0 and row["ended_at"]


def test_two_processes_writing_at_once_lose_no_rows(tmp_path, tiny_gpt2):
    path, go, count = tmp_path / "shared.sqlite", tmp_path / "go", 40
    procs = [child("writer", str(path), str(tiny_gpt2), name, str(count), str(go))
             for name in ("first", "second")]
    try:
        for proc in procs:
            assert proc.stdout is not None and json.loads(proc.stdout.readline()) == "ready"
        go.touch()
        ids = {}
        for proc, name in zip(procs, ("first", "second"), strict=True):
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
            ids[name] = [json.loads(line) for line in out.splitlines()]
    finally:
        for proc in procs:
            proc.kill()
    every = rows(path)
    assert len(every) == 2 * count
    for name in ("first", "second"):
        mine = [r for r in every if r["model"] == name]
        assert [r["id"] for r in mine] == ids[name]
        assert [r["prompt"] for r in mine] == [f"{name} generation {i}" for i in range(count)]
        assert all(r["status"] == "ok" and r["ended_at"] for r in mine)


# -- magics ----------------------------------------------------------------------------


@pytest.fixture
def ip(store, tiny_gpt2):
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "llm_magic")
    shell.run_line_magic("llm", f"load {tiny_gpt2} --as htiny")
    yield shell
    lm.get_manager().unload("htiny")
    shell.run_line_magic("unload_ext", "llm_magic")
    shell.config.pop("LLMMagics", None)
    shell.user_ns.pop("_llm", None)


def test_history_and_rerun_magics(ip, capsys):
    ip.run_cell_magic("llm", "htiny -n 8 -t 1.0 --seed 4", "A list comprehension")
    ip.run_cell_magic("llm", "htiny -n 8", "A dict")
    first = ip.user_ns["_llm"]
    capsys.readouterr()
    ip.run_line_magic("llm", "history")
    shown = capsys.readouterr().out
    assert "A list comprehension" in shown and "A dict" in shown
    ip.run_line_magic("llm", "history -n 1 --search list --model htiny")
    shown = capsys.readouterr().out
    assert "A list comprehension" in shown and "A dict" not in shown
    ip.run_line_magic("llm", f"rerun {first.id}")
    assert "the output matches" in capsys.readouterr().out
    assert lm.last().text == first.text and lm.last().id > first.id
    for line, match in (("rerun 999", "no generation 999"), ("rerun x", "invalid int"),
                        ("history -n 0", "positive")):
        with pytest.raises(UsageError, match=match):
            ip.run_line_magic("llm", line)


def test_config_traits_move_and_stop_history(ip, tmp_path):
    other = tmp_path / "elsewhere.sqlite"
    ip.run_line_magic("config", f"LLMMagics.history_path = {str(other)!r}")
    ip.run_cell_magic("llm", "htiny -n 2", "Hello")
    assert history_settings().path == other and len(rows(other)) == 1
    ip.run_line_magic("config", "LLMMagics.history_enabled = False")
    ip.run_cell_magic("llm", "htiny -n 2", "Hello")
    assert ip.user_ns["_llm"].id is None and len(rows(other)) == 1
