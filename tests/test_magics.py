"""The %%llm and %llm magics, driven through a real InteractiveShell on tiny random models."""

from __future__ import annotations

import _thread
import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from IPython.core.displaypub import DisplayPublisher
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import llm_magic as lm
from llm_magic import magics as magics_pkg
from llm_magic.errors import LLMMagicWarning
from llm_magic.generation import Generation, GenerationStats
from llm_magic.magics import _commands, _output
from llm_magic.magics._magics import LLMMagics
from llm_magic.magics._prompt import interpolate, split_batch

HEAVY = ("torch", "transformers", "pynvml", "anywidget")
PROMPT = "The import statement"


# -- fixtures -----------------------------------------------------------------


@pytest.fixture(scope="module")
def shell() -> InteractiveShell:
    return InteractiveShell.instance()


# Models that stay loaded from test to test: unloading costs two full garbage collections.
RESIDENT = ("tiny", "chatty")


@pytest.fixture
def ip(shell: InteractiveShell):
    """The shell with the extension freshly loaded; models, settings and results reset after."""
    shell.run_line_magic("load_ext", "llm_magic")
    yield shell
    manager = lm.get_manager()
    for name in manager.names():
        if name not in RESIDENT:
            manager.unload(name)
    manager.last_generation = None
    shell.run_line_magic("unload_ext", "llm_magic")
    shell.config.pop("LLMMagics", None)
    for name in ("_llm", "result", "x", "word", "story"):
        shell.user_ns.pop(name, None)


@pytest.fixture
def magics(ip: InteractiveShell) -> LLMMagics:
    return ip.magics_manager.registry["LLMMagics"]


@pytest.fixture
def tiny(ip: InteractiveShell, tiny_gpt2: Path) -> str:
    ip.run_line_magic("llm", f"load {tiny_gpt2} --as tiny")
    return "tiny"


@pytest.fixture
def chatty(ip: InteractiveShell, tiny_llama: Path) -> str:
    ip.run_line_magic("llm", f"load {tiny_llama} --as chatty")
    return "chatty"


@pytest.fixture(scope="module")
def long_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model with a long context whose greedy output from "Hello" never ends early."""
    from _models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("long"), arch="gpt2", context=8192, seed=0)


class Recorder(DisplayPublisher):
    """Records what a notebook front end would receive."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[dict[str, Any], dict[str, Any] | None, bool]] = []

    def publish(self, data: Any, metadata: Any = None, source: Any = None, *,
                transient: Any = None, update: bool = False, **kwargs: Any) -> None:
        self.calls.append((data, transient, update))


@pytest.fixture
def notebook(ip: InteractiveShell, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """Make the shell look like a kernel with a front end and record its display messages."""
    recorder = Recorder()
    monkeypatch.setattr(_output, "in_notebook", lambda shell: True)
    monkeypatch.setattr(ip, "display_pub", recorder)
    return recorder


def cell(ip: InteractiveShell, line: str, body: str = PROMPT) -> Any:
    return ip.run_cell_magic("llm", line, body)


def last(ip: InteractiveShell) -> Any:
    return ip.user_ns["_llm"]


def usage_error(call: Any, *args: Any) -> UsageError:
    """Run ``call(*args)`` and return the error, which must be exactly a UsageError."""
    with pytest.raises(UsageError) as info:
        call(*args)
    assert type(info.value) is UsageError
    message = str(info.value)
    assert message and "\n" not in message
    return info.value


def _gen(text: str, prompt: str = "p", reason: str = "length") -> Generation:
    stats = GenerationStats(1, 3, 0.01, 100.0, 0.03, reason)
    return Generation(text=text, prompt=prompt, model="m<x>", stats=stats)


# -- loading the extension ----------------------------------------------------


def test_load_ext_imports_nothing_heavy():
    """Nothing heavy on the calling thread (the warm-up thread imports torch on purpose)."""
    code = textwrap.dedent(f"""
        import sys, threading, time
        seen = []
        class Spy:
            def find_spec(self, name, path=None, target=None):
                if name in {HEAVY!r} and threading.current_thread() is threading.main_thread():
                    seen.append(name)
        sys.meta_path.insert(0, Spy())
        from IPython.core.interactiveshell import InteractiveShell
        ip = InteractiveShell.instance()
        t = time.perf_counter()
        ip.run_line_magic("load_ext", "llm_magic")
        took = time.perf_counter() - t
        print(took, ",".join(seen))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "LLM_MAGIC_WARM_UP": "1"}).stdout.split()
    assert out[1:] == [], f"%load_ext llm_magic imported {out[1:]}"


def test_unload_ext_removes_the_magics(ip):
    ip.run_line_magic("unload_ext", "llm_magic")
    assert "llm" not in ip.magics_manager.magics["line"]
    assert "llm" not in ip.magics_manager.magics["cell"]
    assert not any(isinstance(c, LLMMagics) for c in ip.configurables)
    ip.run_line_magic("load_ext", "llm_magic")
    assert sum(isinstance(c, LLMMagics) for c in ip.configurables) == 1


# -- %%llm: generation and streaming ------------------------------------------


def test_cell_generates_streams_and_stores(ip, tiny, capsys):
    result = ip.run_cell(f"%%llm -n 12\n{PROMPT}\n")
    assert result.success and result.result is None  # nothing lands in Out
    gen = last(ip)
    assert isinstance(gen, Generation) and gen.model == "tiny" and gen.prompt == PROMPT
    assert gen.text and gen.stats.new_tokens <= 12
    printed = capsys.readouterr().out
    assert printed == gen.text + ("" if gen.text.endswith("\n") else "\n")
    same = lm.generate(PROMPT, model="tiny", max_new_tokens=12)
    assert same.text == gen.text


def test_no_stream_prints_once_at_the_end(ip, tiny, capsys):
    cell(ip, "-n 8 --no-stream")
    assert capsys.readouterr().out == last(ip).text + "\n"


def test_notebook_streams_into_one_display_updated_in_place(ip, long_model, notebook):
    ip.run_line_magic("llm", f"load {long_model} --as long")
    ip.run_line_magic("config", "LLMMagics.throttle = 0.05")
    notebook.calls.clear()  # the load's summary
    cell(ip, "-n 300 --no-chat", "Hello")
    gen = last(ip)
    first, *updates = notebook.calls
    assert first[2] is False and updates and all(u[2] for u in updates)
    display_id = first[1]["display_id"]
    assert all(u[1]["display_id"] == display_id for u in updates)
    texts = [c[0]["text/plain"] for c in notebook.calls]
    assert texts[-1] == gen.text
    assert all(gen.text.startswith(t) for t in texts)  # each update shows more of the same text
    assert all("<" not in c[0]["text/plain"] or "&lt;" in c[0]["text/html"] for c in notebook.calls)
    # throttled: no more updates than the duration allows, plus the first and the final one
    assert len(notebook.calls) <= gen.stats.duration / 0.05 + 3


def test_notebook_without_stream_displays_once(ip, tiny, notebook):
    notebook.calls.clear()
    cell(ip, "-n 8 --no-stream")
    assert len(notebook.calls) == 1 and notebook.calls[0][2] is False
    assert notebook.calls[0][0]["text/plain"] == last(ip).text


@pytest.mark.parametrize("fmt,mime", [("text", "text/html"), ("markdown", "text/markdown"),
                                      ("code", "text/html")])
def test_format_picks_the_final_render(ip, tiny, notebook, fmt, mime):
    notebook.calls.clear()
    cell(ip, f"-n 8 --format {fmt}")
    final = notebook.calls[-1][0]
    assert final["text/plain"] == last(ip).text and mime in final
    if fmt == "code":
        assert "<code>" in final["text/html"]


def test_renders_escape_model_text():
    gen = _gen("<script>alert(1)</script> & `<b>` done")
    text = _output.render(gen, "text")
    assert "<script>" not in text["text/html"] and "&lt;script&gt;" in text["text/html"]
    assert "m&lt;x&gt;" in text["text/html"]  # the model's name is escaped too
    assert "<script>" not in _output.render(gen, "code")["text/html"]
    markdown = _output.render(gen, "markdown")["text/markdown"]
    assert "&lt;script>" in markdown and "`<b>`" in markdown
    batch = _output.render_batch([gen, _gen("x", prompt="<i>p</i>")], "markdown")
    assert "<script>" not in batch["text/html"] and "<i>p" not in batch["text/html"]


@pytest.mark.parametrize("source,expected", [
    ("plain <b>x</b>", "plain &lt;b>x&lt;/b>"),
    ("a < b and c<=d", "a < b and c<=d"),
    ("```\n<b>kept</b>\n```\n<i>", "```\n<b>kept</b>\n```\n&lt;i>"),
    ("``<img onerror=x>`", "``&lt;img onerror=x>`"),  # unmatched run: not a code span
    ("`a\n\n<img>`", "`a\n\n&lt;img>`"),  # no code span across paragraphs
    ("- ```\n  x\n<img>", "- ```\n  x\n&lt;img>"),  # an indented fence may end early
    ("``` a`b\n<img>", "``` a`b\n&lt;img>"),  # not a fence: backtick in the info string
])
def test_markdown_keeps_code_and_escapes_html(source, expected):
    assert _output.safe_markdown(source) == expected


# -- options --------------------------------------------------------------------


def test_max_new_tokens(ip, tiny):
    cell(ip, "-n 5")
    assert last(ip).stats.new_tokens <= 5 and last(ip).params["max_new_tokens"] == 5
    cell(ip, "--max-new-tokens 3")
    assert last(ip).stats.new_tokens <= 3


def test_explicit_length_past_the_context_warns(ip, tiny):
    with pytest.warns(LLMMagicWarning, match="fit"):
        cell(ip, "-n 500")


def test_sampling_options_reach_the_api_and_seed_reproduces(ip, tiny):
    cell(ip, "-n 20 -t 0.9 --top-p 0.9 --top-k 50 --seed 7")
    first = last(ip)
    cell(ip, "-n 20 --temperature 0.9 --top-p 0.9 --top-k 50 --seed 7")
    assert last(ip).text == first.text
    assert first.params | {} == {**first.params, "temperature": 0.9, "top_p": 0.9,
                                 "top_k": 50, "seed": 7}
    api = lm.generate(PROMPT, model="tiny", max_new_tokens=20, temperature=0.9, top_p=0.9,
                      top_k=50, seed=7)
    assert api.text == first.text


def test_stop_is_repeatable_and_understands_escapes(ip, tiny):
    cell(ip, r'-n 30 --stop "\n" --stop xyz')
    assert last(ip).params["stop"] == ["\n", "xyz"]
    assert "\n" not in last(ip).text


def test_stop_cuts_the_text(ip, tiny):
    cell(ip, "-n 30")
    full = last(ip).text
    marker = full[5:8]
    cell(ip, f"-n 30 --stop={marker!r}")
    assert last(ip).text == full[: full.find(marker)]
    assert last(ip).stats.stop_reason == "stop"


def test_system_and_chat_template(ip, chatty):
    cell(ip, "-n 4")
    templated = last(ip).stats.prompt_tokens
    cell(ip, "-n 4 --no-chat")
    plain = last(ip).stats.prompt_tokens
    assert templated > plain
    cell(ip, '-n 4 --chat --system "You are terse."')
    assert last(ip).params["system"] == "You are terse." and last(ip).params["chat"] is True
    assert last(ip).stats.prompt_tokens > templated


def test_chat_on_a_model_without_template_is_a_usage_error(ip, tiny):
    error = usage_error(cell, ip, "--chat")
    assert "--no-chat" in str(error)


def test_attention_cell_attaches_the_map(ip, tiny):
    cell(ip, "-n 3 --attention")
    assert last(ip).attention.shape[2] == last(ip).stats.prompt_tokens + 3


def test_out_stores_the_generation(ip, tiny):
    cell(ip, "-n 4 -o result")
    assert ip.user_ns["result"] is last(ip)
    cell(ip, "-n 4 --out=result")
    assert ip.user_ns["result"] is last(ip)


@pytest.mark.parametrize("name", ["1x", "a-b", "class", "In", "get_ipython", "a.b"])
def test_out_must_be_a_free_identifier(ip, tiny, name):
    usage_error(cell, ip, f"--out {name}")
    assert "_llm" not in ip.user_ns


def test_batch_generates_each_prompt(ip, tiny, capsys):
    cell(ip, "-n 6 --batch", "A list\n---\nA dict\n  ---  \nA set")
    gens = last(ip)
    assert [g.prompt for g in gens] == ["A list", "A dict", "A set"]
    assert all(isinstance(g, Generation) and g.stats.new_tokens <= 6 for g in gens)
    out = capsys.readouterr().out
    assert "[1] A list" in out and "[3] A set" in out
    for g in gens:
        assert g.text in out


def test_batch_in_a_notebook_shows_each_prompt(ip, tiny, notebook):
    notebook.calls.clear()
    cell(ip, "-n 4 --batch -o result", "A <list>\n---\nA dict")
    assert len(notebook.calls) == 1
    html = notebook.calls[0][0]["text/html"]
    assert "[1] A &lt;list&gt;" in html and "[2] A dict" in html
    assert ip.user_ns["result"] is last(ip)


def test_batch_with_an_empty_prompt_is_a_usage_error(ip, tiny):
    usage_error(cell, ip, "--batch", "A\n---\n\n---\nB")


def test_model_positional_uses_or_loads(ip, tiny, long_model):
    cell(ip, "tiny -n 3")
    assert last(ip).model == "tiny"
    cell(ip, f"{long_model} -n 3")  # a source, loaded on first use
    assert last(ip).model == long_model.name and lm.get_manager().is_loaded(long_model.name)


# -- interpolation ----------------------------------------------------------------

CODE_PROMPTS = [
    'd = {"a": 1, "b": [1, 2]}',
    'print(f"{x!r:>10} {x.y} {x[0]}")',
    '{"json": {}, "list": [{}, {}]}',
    "'{0} and {1}'.format(a, b) and {}",
    "{{x}} {{ x }} {{{x}}} {x}} {{x}",
    "{ x } {x } {x.y} {x[0]} {x!r} {x:>3}",
    "{class} {def} {missing_name} {_ignored_missing}",
    "template = '{{ user.name }}' and {% raw %}",
    "unbalanced { and } and {x and x}",
    "lambda: {k: v for k, v in d.items()}",
]


@pytest.mark.parametrize("prompt", CODE_PROMPTS)
def test_code_heavy_prompts_are_unchanged(prompt):
    namespace = {"x": "SUBSTITUTED", "a": 1, "b": 2, "d": {}, "k": 0, "v": 0}
    assert interpolate(prompt, namespace) == prompt


def test_bound_names_are_substituted():
    ns = {"word": "hi", "n": 3, "_x": [1]}
    assert interpolate("Say {word} {n} times, {_x}; {nope}", ns) == "Say hi 3 times, [1]; {nope}"


@given(st.text())
@settings(max_examples=200, deadline=None)
def test_interpolation_without_bound_names_is_the_identity(text):
    assert interpolate(text, {}) == text


@given(st.text(alphabet="{}x ab\n'\":!.[]0", max_size=40))
@settings(max_examples=300, deadline=None)
def test_interpolation_only_replaces_whole_fields(text):
    out = interpolate(text, {"x": "<X>"})
    assert out.replace("<X>", "{x}") == text


def test_cell_interpolates_from_the_user_namespace(ip, tiny):
    ip.user_ns["word"] = "imports"
    cell(ip, "-n 3", 'About {word}: {"k": {word} } {"k": {word}} {{word}}')
    assert last(ip).prompt == 'About imports: {"k": imports } {"k": {word}} {{word}}'
    cell(ip, "-n 3 --no-interpolate", "About {word}")
    assert last(ip).prompt == "About {word}"
    ip.run_line_magic("config", "LLMMagics.interpolate = False")
    cell(ip, "-n 3", "About {word}")
    assert last(ip).prompt == "About {word}"


def test_a_value_that_cannot_become_text_is_a_usage_error(ip, tiny):
    class Bad:
        def __format__(self, spec: str) -> str:
            raise RuntimeError("no")

    ip.user_ns["x"] = Bad()
    assert "--no-interpolate" in str(usage_error(cell, ip, "-n 3", "About {x}"))


def test_batch_prompts_are_split_before_interpolation(ip, tiny):
    ip.user_ns["x"] = "one\n---\ntwo"
    cell(ip, "-n 2 --batch", "{x}\n---\nthree")
    assert [g.prompt for g in last(ip)] == ["one\n---\ntwo", "three"]


def test_split_batch():
    assert split_batch("a\n---\nb\n---\n\nc\n") == ["a", "b", "c"]
    assert split_batch("no separator --- here") == ["no separator --- here"]


# -- errors: exactly UsageError, nothing changed --------------------------------

BAD_CELLS = [
    ("--bogus", PROMPT),
    ("-n", PROMPT),
    ("-n x", PROMPT),
    ("-n 0", PROMPT),
    ("-n -3", PROMPT),
    ("-t -1", PROMPT),
    ("-t nan", PROMPT),
    ("--top-p 2", PROMPT),
    ("--top-k 0", PROMPT),
    ("--seed -1", PROMPT),
    ("--format html", PROMPT),
    ('--stop ""', PROMPT),
    ("--out 'two words'", PROMPT),
    ('"unclosed', PROMPT),
    ("tiny extra", PROMPT),
    ("", ""),
    ("", "\n   \n"),
    ("no-such-model", PROMPT),
    ("./no/such/dir", PROMPT),
    ("http://127.0.0.1:9/v1", PROMPT),
    ("-h", PROMPT),
]


@pytest.mark.parametrize("line,body", BAD_CELLS)
def test_bad_cells_raise_usage_error_and_change_nothing(ip, tiny, line, body, capsys):
    ip.user_ns["_llm"] = sentinel = object()
    names = lm.get_manager().names()
    usage_error(cell, ip, line, body)
    assert ip.user_ns["_llm"] is sentinel and lm.get_manager().names() == names
    assert capsys.readouterr().out == ""  # no half-shown output


def test_failed_cell_fails_run_cell(ip, tiny):
    result = ip.run_cell("%%llm --bogus\nHello\n")
    assert not result.success and type(result.error_in_exec) is UsageError


def test_library_errors_keep_their_cause(ip, tiny):
    error = usage_error(cell, ip, "-n 0")
    assert isinstance(error.__cause__, lm.InvalidOptionError)


def test_without_any_model_the_demo_is_the_fallback(ip, monkeypatch):
    lm.get_manager().unload(all=True)
    asked: list[str] = []

    def fake_load(source: str, **kwargs: Any) -> Any:
        asked.append(source)
        raise lm.ModelNotFoundError("no demo here")

    monkeypatch.setattr("llm_magic.magics._magics.load", fake_load)
    usage_error(cell, ip, "-n 2")
    assert asked == ["demo"]


# -- %llm subcommands -------------------------------------------------------------


def test_load_shows_a_summary(ip, tiny_gpt2, capsys):
    if lm.get_manager().is_loaded("tiny"):
        lm.unload("tiny")
    ip.run_line_magic("llm", f"load {tiny_gpt2} --as tiny --pin")
    out = capsys.readouterr().out
    assert "Loaded 'tiny'" in out
    for field in ("parameters", "memory", "device", "dtype", "load time", "revision", "commit"):
        assert field in out
    info = lm.get_manager().info("tiny")
    assert info.pinned and f"{info.parameters:,}" in out
    ip.run_line_magic("llm", f"load '{tiny_gpt2}' --as tiny")
    assert "already loaded" in capsys.readouterr().out


def test_load_summary_renders_as_html(tiny, ip):
    summary = _output.ModelSummary(lm.get_manager().info("tiny"))
    html = summary._repr_html_()
    assert "<table" in html and "tiny" in html and "float32" in html


@pytest.mark.parametrize("line", [
    "load /no/such/model --as x",
    "load {path} --as 'bad name'",
    "load {path} --dtype float8",
    "load {path} --device tpu",
    "load {path} --revision main",
    "load",
    "load {path} --bogus",
])
def test_failed_load_registers_nothing(ip, tiny_gpt2, line):
    names = lm.get_manager().names()
    usage_error(ip.run_line_magic, "llm", line.format(path=tiny_gpt2))
    assert lm.get_manager().names() == names


def test_load_conflict_then_reload(ip, tiny, long_model):
    usage_error(ip.run_line_magic, "llm", f"load {long_model} --as tiny")
    assert lm.get_manager().info("tiny").context_length == 128
    ip.run_line_magic("llm", f"load {long_model} --as tiny --reload")
    assert lm.get_manager().info("tiny").context_length == 8192
    lm.unload("tiny")


def test_list_use_unload(ip, tiny, chatty, capsys):
    capsys.readouterr()
    ip.run_line_magic("llm", "list")
    table = capsys.readouterr().out
    assert "tiny" in table and "chatty" in table and "float32" in table
    ip.run_line_magic("llm", "use tiny")
    assert "'tiny'" in capsys.readouterr().out
    cell(ip, "-n 2")
    assert last(ip).model == "tiny"
    ip.run_line_magic("llm", "unload tiny")
    assert "Unloaded 'tiny'" in capsys.readouterr().out
    ip.run_line_magic("llm", "unload --all")
    assert "Unloaded 'chatty'" in capsys.readouterr().out
    assert lm.get_manager().names() == []
    ip.run_line_magic("llm", "unload --all")
    assert "No models" in capsys.readouterr().out
    ip.run_line_magic("llm", "list")
    assert "No models loaded" in capsys.readouterr().out


@pytest.mark.parametrize("line", ["unload", "unload tiny --all", "unload nope", "use nope",
                                  "use", "list extra", "debug maybe", "frobnicate", "help me"])
def test_bad_subcommands_raise_usage_error(ip, tiny, line):
    names = lm.get_manager().names()
    usage_error(ip.run_line_magic, "llm", line)
    assert lm.get_manager().names() == names


def test_help_lists_every_subcommand_once(ip, capsys):
    ip.run_line_magic("llm", "help")
    out = capsys.readouterr().out
    for name in ("load", "unload", "list", "use", "debug", "help"):
        assert sum(line.startswith(f"%llm {name}") for line in out.splitlines()) == 1
    assert out.splitlines()[0].startswith("%%llm")
    # lines break between words within 79 columns, so no output area cuts a word in two
    assert max(len(line) for line in out.splitlines()) <= 79
    assert "endpoint, last use." in " ".join(out.split())  # whole words, in order
    ip.run_line_magic("llm", "")
    assert capsys.readouterr().out == out  # bare %llm is help


def test_question_mark_shows_complete_usage(ip, capsys):
    ip.run_cell("%%llm?")
    cell_help = capsys.readouterr().out
    for option in ("--max-new-tokens", "--temperature", "--top-p", "--top-k", "--seed", "--stop",
                   "--system", "--chat", "--no-chat", "--out", "--no-stream", "--format",
                   "--no-interpolate", "--batch", "--attention", "MODEL", "{{name}}"):
        assert option in cell_help, option
    ip.run_cell("%llm?")
    line_help = capsys.readouterr().out
    for option in ("load", "--as", "--revision", "--dtype", "--device", "--trust-remote-code",
                   "--reload", "--pin", "unload", "--all", "use", "debug", "help"):
        assert option in line_help, option
    for subcommand in ("monitor", "--cell", "panel"):
        assert subcommand in line_help, subcommand


def test_debug_logs_into_the_running_cell(ip, tiny, capsys, monkeypatch):
    import io

    ip.run_line_magic("llm", "debug on")
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)  # a new cell's stderr
    cell(ip, "-n 2")
    assert "[llm_magic.generation]" in stream.getvalue()
    assert "tokens/s" in stream.getvalue()
    ip.run_line_magic("llm", "debug off")
    stream.truncate(0)
    cell(ip, "-n 2")
    assert stream.getvalue() == ""
    ip.run_line_magic("llm", "debug")
    assert "off" in capsys.readouterr().out


def test_budget_is_wired_to_the_resources_api(ip, monkeypatch, capsys):
    calls: list[dict[str, Any]] = []

    def fake_budget(**limits: Any) -> str:
        calls.append(limits)
        return "BUDGET TABLE"

    monkeypatch.setattr("llm_magic.manager.budget", fake_budget)
    ip.run_line_magic("llm", "budget")
    ip.run_line_magic("llm", "budget cpu=8GB cuda0=0.5 'mps=1 GB'")
    assert calls == [{}, {"cpu": "8GB", "cuda0": "0.5", "mps": "1 GB"}]
    assert capsys.readouterr().out.count("BUDGET TABLE") == 2
    for bad in ("budget cpu", "budget =3", "budget cpu=", "budget 1x=2"):
        usage_error(ip.run_line_magic, "llm", bad)
    assert len(calls) == 2


def test_budget_with_the_real_resources_module(ip, capsys):
    try:
        ip.run_line_magic("llm", "budget cpu=0.5")
        assert "cpu" in capsys.readouterr().out
        usage_error(ip.run_line_magic, "llm", "budget cpu=lots")
    finally:
        lm.budget(cpu=None)


# -- configuration ------------------------------------------------------------------


def test_traits_are_configurable_with_help(magics):
    traits = LLMMagics.class_traits(config=True)
    expected = {"default_model", "max_new_tokens", "temperature", "stream", "format",
                "interpolate", "chat", "system", "throttle"}
    assert expected <= set(traits)
    assert all(traits[name].help for name in expected)
    assert (magics.default_model, magics.max_new_tokens, magics.temperature, magics.stream,
            magics.format, magics.interpolate, magics.chat, magics.system) == (
        "demo", 128, 0.0, True, "text", True, None, "")


def test_config_magic_sets_the_defaults(ip, tiny, chatty, magics, notebook):
    notebook.calls.clear()
    for line in ("max_new_tokens = 4", "temperature = 0.7", "stream = False",
                 "format = 'markdown'", "chat = False", "system = 'Be brief.'"):
        ip.run_line_magic("config", f"LLMMagics.{line}")
    cell(ip, "chatty --seed 1")
    gen = last(ip)
    assert gen.params["max_new_tokens"] == 4 and gen.params["temperature"] == 0.7
    assert gen.params["chat"] is False and gen.params["system"] == "Be brief."
    assert len(notebook.calls) == 1 and "text/markdown" in notebook.calls[0][0]
    cell(ip, "chatty -n 2 -t 0 --chat --system '' --format code")  # options win over traits
    gen = last(ip)
    assert gen.params["max_new_tokens"] == 2 and gen.params["temperature"] == 0.0
    assert gen.params["chat"] is True and gen.params["system"] is None


def test_bad_config_values_are_refused(ip, magics):
    ip.run_line_magic("config", "LLMMagics.max_new_tokens = 0")
    ip.run_line_magic("config", "LLMMagics.format = 'html'")
    assert magics.max_new_tokens == 128 and magics.format == "text"


def test_config_lists_the_traits(ip, capsys):
    ip.run_line_magic("config", "LLMMagics")
    out = capsys.readouterr().out
    assert "default_model" in out and "throttle" in out


def test_default_model_rules(ip, tiny, chatty, long_model, magics):
    cell(ip, "-n 2")
    assert last(ip).model == "chatty"  # the latest load
    ip.run_line_magic("llm", "use tiny")
    cell(ip, "-n 2")
    assert last(ip).model == "tiny"
    ip.run_line_magic("config", "LLMMagics.default_model = 'chatty'")
    cell(ip, "-n 2")
    assert last(ip).model == "chatty"  # a set default_model wins
    ip.run_line_magic("llm", f"load {long_model} --as third")
    cell(ip, "-n 2")
    assert last(ip).model == "chatty"
    ip.run_line_magic("llm", "use third")  # `use` hands the choice back to the manager
    cell(ip, "-n 2")
    assert last(ip).model == "third"


def test_default_model_is_loaded_on_first_use(ip, tiny, long_model):
    ip.run_line_magic("config", f"LLMMagics.default_model = {str(long_model)!r}")
    cell(ip, "-n 2")
    assert last(ip).model == long_model.name
    ip.run_line_magic("config", "LLMMagics.default_model = 'not-a-model'")
    assert "default_model" in str(usage_error(cell, ip, "-n 2"))


def test_ipython_config_file(tmp_path):
    profile = tmp_path / "profile_default"
    profile.mkdir()
    (profile / "ipython_config.py").write_text(
        "c.LLMMagics.default_model = 'mine'\nc.LLMMagics.max_new_tokens = 7\n"
        "c.InteractiveShellApp.extensions = ['llm_magic']\n"
    )
    code = ("m = get_ipython().magics_manager.registry['LLMMagics']; "
            "print(m.default_model, m.max_new_tokens)")
    env = {**os.environ, "IPYTHONDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "IPython", "--no-banner", "-c", code],
                         capture_output=True, text=True, env=env, check=True).stdout
    assert "mine 7" in out


# -- interrupt -------------------------------------------------------------------------


def test_interrupt_keeps_the_partial_text_and_the_next_cell_works(ip, long_model, capsys):
    ip.run_line_magic("llm", f"load {long_model} --as long")
    capsys.readouterr()
    fired: list[float] = []

    def interrupt() -> None:
        fired.append(time.perf_counter())
        _thread.interrupt_main()

    timer = threading.Timer(0.8, interrupt)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            cell(ip, "-n 6000 --no-chat -o result", "Hello")
    finally:
        stopped = time.perf_counter()
        timer.cancel()
    assert fired and stopped - fired[0] < 0.5
    partial = last(ip)
    assert partial.stats.stop_reason == "interrupted" and 0 < partial.stats.new_tokens < 6000
    assert ip.user_ns["result"] is partial
    shown = capsys.readouterr().out
    assert shown.strip() and partial.text.startswith(shown.rstrip("\n")[:20])
    assert not [t for t in threading.enumerate() if t.name == "llm_magic-long"]
    cell(ip, "-n 3 --no-chat", "Hello")
    assert last(ip).stats.new_tokens == 3


# -- arbitrary input: a result or a UsageError, nothing else ----------------------------

_TOKENS = ["", "-n", "--max-new-tokens", "-t", "--temperature", "--top-p", "--top-k", "--seed",
           "--stop", "--system", "--chat", "--no-chat", "-o", "--out", "--no-stream", "--format",
           "--no-interpolate", "--batch", "--attention", "tiny", "--", "-", "=", "'", '"',
           "text", "markdown", "code", "x", "{x}", "$x", r"\n", "---", "1", "2", "0", "-1",
           "0.5", "1e9", "nan", "inf"]
_OPTION = st.sampled_from(_TOKENS)
_LINES = st.one_of(
    # mostly option-like words, so that many examples reach the model
    st.lists(st.one_of(_OPTION, _OPTION, _OPTION, st.integers(-3, 6).map(str),
                       st.text(max_size=6)), max_size=7).map(" ".join),
    st.text(max_size=30),
)
_BODIES = st.one_of(st.text(min_size=1, max_size=40),
                    st.sampled_from(["", "  ", "Hello {x}", "A\n---\nB", "{'a': {0}}", "---"]))
_SUBCOMMAND_LINES = st.lists(
    st.one_of(st.sampled_from(["load", "unload", "list", "use", "debug", "help", "monitor",
                               "--all", "--as", "--pin", "--dtype", "--device", "tiny", "x",
                               "on", "off", ".", "'", "--reload", "--revision"]),
              st.text(max_size=8)),
    max_size=5).map(" ".join)


_FUZZ = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture]}


@settings(max_examples=60, **_FUZZ)
@given(line=_LINES, body=_BODIES)
def test_any_cell_gives_a_result_or_a_usage_error(ip, tiny, line, body):
    ip.user_ns["x"] = "value"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LLMMagicWarning)  # "only N tokens fit" is a fair answer
        try:
            cell(ip, line, body)
        except UsageError as exc:
            assert type(exc) is UsageError
        else:
            assert isinstance(last(ip), (Generation, list))


@settings(max_examples=40, **_FUZZ)
@given(line=_SUBCOMMAND_LINES)
def test_any_subcommand_gives_a_result_or_a_usage_error(ip, tiny_gpt2, line):
    try:
        ip.run_line_magic("llm", line)
    except UsageError as exc:
        assert type(exc) is UsageError
    finally:
        _commands.set_debug(False)
        _close_widgets()  # `%llm monitor` opened gauges that would follow the sampler on


def _close_widgets() -> None:
    from ipywidgets.widgets.widget import _instances

    for widget in list(_instances.values()):
        widget.close()


def test_package_exports():
    assert {"LLMMagics", "load_ipython_extension", "unload_ipython_extension"} <= set(
        magics_pkg.__all__)
