"""The one boundary check of user text (llm_magic.common.text), at every call that takes text.

Wrong types, empty texts and lone surrogates are refused in one line that says
what and where, before any tokenizer, server or SQLite sees them; markup,
control and bidi characters are ordinary text and go through.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import llm_magic as lm
from llm_magic.common.text import check_text, shown
from llm_magic.errors import InvalidOptionError
from llm_magic.generation import generate, make_request

SURROGATE = "a \ud800"
WHERE = r"lone surrogate U\+D800 at character 2 \('a \\ud800'\): it cannot be encoded as UTF-8"
ODD = ["<b>x</b> <script>alert(1)</script>", "nul \x00 inside", "\u202eevil\u202c text",
       "\x1b[31mred", "zero\u200bwidth", "\ufeffbom", "tab\there\r\n", "\U0001f600 smile"]


def one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message and "\n" not in message
    message.encode("utf-8")  # the message itself prints anywhere
    return message


# -- check_text -------------------------------------------------------------------------


def test_check_text_passes_text_through():
    for text in ["x", *ODD]:
        assert check_text(text) is text
    assert check_text("", allow_empty=True) == "" and check_text("  ", allow_empty=True) == "  "
    assert check_text("\n\n", "Stop string 1", allow_blank=True) == "\n\n"
    joined = "\ud83d\ude00".encode("utf-16", "surrogatepass").decode("utf-16")
    assert check_text(joined) == "\U0001f600"


@pytest.mark.parametrize(("value", "kind"), [(12345, "int"), (None, "NoneType"), (b"x", "bytes"),
                                             (["a"], "list"), (3.5, "float")])
def test_check_text_names_a_wrong_type(value, kind):
    with pytest.raises(InvalidOptionError, match=f"^The text must be a string, not {kind}.$"):
        check_text(value, "The text")


def test_check_text_refuses_empty_text_as_asked():
    for value in ("", " \n\t"):
        with pytest.raises(InvalidOptionError, match="^The text is empty: write some text to "
                                                     "score.$"):
            check_text(value, "The text", hint="write some text to score")
    with pytest.raises(InvalidOptionError, match="Stop string 1 is empty"):
        check_text("", "Stop string 1", allow_blank=True)


def test_check_text_says_where_a_surrogate_is_and_shows_it_escaped():
    with pytest.raises(InvalidOptionError) as info:
        check_text(SURROGATE)
    assert one_line(info.value).startswith(
        "The prompt has a lone surrogate U+D800 at character 2 ('a \\ud800'): it cannot be "
        "encoded as UTF-8. Remove or replace it")
    long = "x" * 30 + "\u202e\x00\udc80" + "y" * 30
    with pytest.raises(InvalidOptionError) as info:
        check_text(long, "The text")
    message = one_line(info.value)
    assert "U+DC80 at character 32 (…'xxxxxxxxxx\\u202e\\x00\\udc80yyyyyyyyyyyy'…)" in message
    with pytest.raises(InvalidOptionError, match="half of a UTF-16 pair kept apart"):
        check_text("ok \ud83d\ude00")


def test_shown_is_short_and_safe():
    assert shown(2**63) == "9223372036854775808"
    assert shown(10**5000) == "an integer of 16610 bits"
    assert shown("x" * 100) == "'" + "x" * 38 + "…"
    assert shown("\ud800") == "'\\ud800'"

    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError

    assert shown(Broken()) == "a Broken"


# -- the analyses -------------------------------------------------------------------------


@pytest.fixture
def tiny(manager, tiny_gpt2):
    return manager.load(str(tiny_gpt2), name="tiny").name


ANALYSES = {
    "score": lambda text, manager: lm.score(text, model="tiny", manager=manager),
    "logit_lens": lambda text, manager: lm.logit_lens(text, model="tiny", manager=manager),
    "attention": lambda text, manager: lm.attention(text, model="tiny", manager=manager),
}


@pytest.mark.parametrize("name", ANALYSES)
def test_an_analysis_refuses_a_surrogate_in_one_line(manager, tiny, name):
    with pytest.raises(InvalidOptionError, match="^The text has a " + WHERE) as info:
        ANALYSES[name](SURROGATE, manager)
    one_line(info.value)


@pytest.mark.parametrize("name", ["score", "attention"])
def test_an_analysis_names_a_wrong_type(manager, tiny, name):
    with pytest.raises(InvalidOptionError, match="^The text must be a string, not int."):
        ANALYSES[name](12345, manager)


def test_logit_lens_names_a_wrong_type_before_loading_anything(manager):
    with pytest.raises(InvalidOptionError, match="reads a text or a Generation, not int"):
        lm.logit_lens(12345, model="no/such-model", manager=manager)
    with pytest.raises(InvalidOptionError, match="not an integer of 16610 bits"):
        lm.logit_lens("x", top=10**5000, manager=manager)
    assert manager.names() == []


@pytest.mark.parametrize("name", ANALYSES)
def test_an_analysis_reads_odd_text_as_text(manager, tiny, name):
    for text in ODD:
        assert ANALYSES[name](text, manager) is not None


def test_compare_refuses_a_surrogate_before_generating(manager, tiny):
    settings = [{"temperature": 0}, {"temperature": 1.0, "seed": 1}]
    with pytest.raises(InvalidOptionError, match="^The prompt has a " + WHERE):
        lm.compare(SURROGATE, settings=settings, model="tiny", stream=False, manager=manager)
    with pytest.raises(InvalidOptionError, match="^The prompt must be a string, not int"):
        lm.compare(12345, settings=settings, model="tiny", stream=False, manager=manager)
    assert manager.last_generation is None
    result = lm.compare(ODD[2], settings=settings, model="tiny", stream=False, manager=manager,
                        max_new_tokens=2)
    assert len(result) == 2


# -- generation (make_request is the boundary) ---------------------------------------------


def test_a_generation_refuses_a_surrogate_in_the_prompt_system_or_stop(manager, tiny):
    for kwargs, what in (({}, "The prompt"), ({"system": "\ud800 sys"}, "The system prompt"),
                         ({"stop": ["ok", "\udfff"]}, "Stop string 2")):
        prompt = SURROGATE if not kwargs else "Hello"
        with pytest.raises(InvalidOptionError, match=f"^{what} has a lone surrogate") as info:
            generate(prompt, max_new_tokens=2, manager=manager, **kwargs)
        one_line(info.value)
        with pytest.raises(InvalidOptionError, match=f"^{what} has a lone surrogate"):
            make_request(prompt, **kwargs)
    with pytest.raises(InvalidOptionError, match="^The prompt has a " + WHERE):
        generate(SURROGATE, max_new_tokens=2, manager=manager)
    assert manager.last_generation is None


def test_a_generation_keeps_blank_stops_and_an_empty_system(manager, tiny):
    request = make_request("Hello", stop=["\n\n", " "], system="")
    assert request.stop == ("\n\n", " ") and request.system is None
    for bad in ([""], [3]):
        with pytest.raises(InvalidOptionError):
            make_request("Hello", stop=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="must be a string, not int"):
        make_request("Hello", system=3)  # type: ignore[arg-type]
    for text in ODD:
        assert generate(text, max_new_tokens=2, manager=manager, system=text).text is not None


# -- the %%llm cell -------------------------------------------------------------------------


@pytest.mark.parametrize("options", [
    {"seed": 10**5000}, {"max_new_tokens": 10**5000}, {"logprobs": 10**5000},
    {"top_k": 2**40}, {"temperature": float("nan")}, {"stop": 5},
])
def test_a_huge_or_odd_number_is_one_line_and_nothing_is_recorded(manager, tiny, options):
    """Numbers too large for SQLite, torch or even repr() are refused before any work."""
    before = manager.last_generation
    with pytest.raises(InvalidOptionError) as caught:
        generate("Hello", model=tiny, manager=manager, **{"max_new_tokens": 2, **options})
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 200
    assert manager.last_generation is before


@pytest.fixture
def ip(tiny_gpt2: Path):
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "llm_magic")
    shell.run_line_magic("llm", f"load {tiny_gpt2} --as ttiny")
    lm.get_manager().last_generation = None  # what earlier tests left
    shell.user_ns.pop("_llm", None)
    yield shell
    lm.get_manager().unload("ttiny")
    lm.get_manager().last_generation = None
    shell.run_line_magic("unload_ext", "llm_magic")
    for name in ("_llm", "bad"):
        shell.user_ns.pop(name, None)


def usage_error(call, *args) -> str:
    with pytest.raises(UsageError) as info:
        call(*args)
    assert type(info.value) is UsageError
    return one_line(info.value)


def test_a_cell_with_a_surrogate_is_one_usage_error(ip):
    message = usage_error(ip.run_cell_magic, "llm", "ttiny -n 2", SURROGATE)
    assert message.startswith("The prompt has a lone surrogate U+D800 at character 2 "
                              "('a \\ud800')")
    message = usage_error(ip.run_cell_magic, "llm", "ttiny -n 2 --batch", "fine\n---\nx \udc00")
    assert message.startswith("Prompt 2 of the batch has a lone surrogate U+DC00 at character 2")
    message = usage_error(ip.run_cell_magic, "llm", "ttiny --score", SURROGATE)
    assert "lone surrogate U+D800" in message
    ip.user_ns["bad"] = "\ud800"
    message = usage_error(ip.run_cell_magic, "llm", "ttiny -n 2", "Say {bad}")
    assert message.startswith("The prompt has a lone surrogate U+D800 at character 4")
    assert lm.get_manager().last_generation is None and "_llm" not in ip.user_ns


def test_a_cell_with_a_surrogate_in_its_options_is_one_usage_error(ip):
    for line in ("ttiny -n 2 --system \ud800", "ttiny -n 2 --stop \ud800"):
        assert "lone surrogate U+D800" in usage_error(ip.run_cell_magic, "llm", line, "Hello")
    assert lm.get_manager().last_generation is None


def test_a_surrogate_cell_through_run_cell_shows_one_line_not_a_traceback(ip, capsys):
    result = ip.run_cell(f"%%llm ttiny -n 2\n{SURROGATE}\n")
    assert type(result.error_in_exec) is UsageError
    shown_ = capsys.readouterr()
    assert "Traceback" not in shown_.out + shown_.err
    assert "lone surrogate U+D800 at character 2" in shown_.out + shown_.err


def test_odd_text_in_a_cell_generates(ip):
    for body in ODD:
        ip.run_cell_magic("llm", "ttiny -n 2 --no-interpolate", body)
        assert ip.user_ns["_llm"].prompt == body.strip("\r\n")
