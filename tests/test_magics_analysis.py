"""``%%llm --logprobs`` and ``--score`` through a real InteractiveShell and a tiny model."""

from __future__ import annotations

import math

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import llm_magic as lm


@pytest.fixture
def ip(tiny_gpt2):
    """A shell with the tiny GPT-2 loaded under ``MODEL`` (a test before may hold it already)."""
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "llm_magic")
    manager = lm.get_manager()
    before = set(manager.names())
    name = lm.load(str(tiny_gpt2)).name  # the resident model's name if it is loaded already
    shell.user_ns["MODEL"] = name
    yield shell
    if name not in before:
        manager.unload(name)
    shell.run_line_magic("unload_ext", "llm_magic")
    for var in ("_llm", "_llm_lens", "MODEL"):
        shell.user_ns.pop(var, None)


def test_logprobs_cell_keeps_records(ip):
    ip.run_cell_magic("llm", "$MODEL -n 6 --logprobs 3", "A list comprehension")
    gen = ip.user_ns["_llm"]
    assert len(gen.tokens) == gen.stats.new_tokens == 6
    assert all(r.rank == 1 and len(r.top) == 3 for r in gen.tokens)  # greedy
    assert gen.logprobs_mode == "raw"


def test_logprobs_mode_alone_means_five_alternatives(ip):
    ip.run_cell_magic("llm", "$MODEL -n 4 -t 1.0 --seed 2 --logprobs-mode sampled", "A dict")
    gen = ip.user_ns["_llm"]
    assert gen.logprobs_mode == "sampled"
    assert all(len(r.top) == 5 for r in gen.tokens)


def test_score_cell(ip):
    ip.run_cell_magic("llm", "$MODEL --score --logprobs 2 --out s", "A list comprehension")
    scores = ip.user_ns["_llm"]
    assert scores is ip.user_ns["s"]
    assert isinstance(scores, lm.Scores)
    assert len(scores.tokens) == len(scores.ids) - 1
    assert math.isclose(scores.perplexity, math.exp(-scores.logprob / len(scores.tokens)))


@pytest.mark.parametrize(("line", "message"), [
    ("$MODEL --logprobs 0", "from 1 to 20"),
    ("$MODEL --logprobs 21", "from 1 to 20"),
    ("$MODEL --score -t 0.5", "-t does not apply"),
    ("$MODEL --score --batch", "--score reads one text"),
])
def test_bad_options_fail_the_cell(ip, line, message):
    with pytest.raises(UsageError, match=message):
        ip.run_cell_magic("llm", line, "A list\n---\nA dict")


def test_help_lists_the_options(ip):
    doc = ip.find_cell_magic("llm").__self__.llm_cell.parser.format_help()
    for option in ("--logprobs K", "--logprobs-mode MODE", "--score"):
        assert option in doc


def test_lens_cell_shows_the_final_sequence(ip):
    ip.run_cell_magic("llm", "$MODEL -n 5 --lens", "A list comprehension")
    gen, lens = ip.user_ns["_llm"], ip.user_ns["_llm_lens"]
    assert isinstance(lens, lm.LensMap)
    assert len(lens.tokens) == len(gen.prompt_ids) + gen.stats.new_tokens
    ip.run_cell_magic("llm", "$MODEL --score --lens", "A dict comprehension")
    assert len(ip.user_ns["_llm_lens"].tokens) == len(ip.user_ns["_llm"].ids)


def test_lens_does_not_combine_with_batch(ip):
    with pytest.raises(UsageError, match="--lens looks at one sequence"):
        ip.run_cell_magic("llm", "$MODEL --lens --batch", "A list\n---\nA dict")
