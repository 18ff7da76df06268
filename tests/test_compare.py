"""lm.compare: columns through the generation path, cross-scores checked by hand on tiny models."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from _models import build_tiny_model

import llm_magic as lm
from llm_magic.analysis.compare import Comparison, CrossScore, Piece, compare
from llm_magic.analysis.tokens import score
from llm_magic.errors import InvalidOptionError

PROMPT = "A list comprehension"


@pytest.fixture(scope="module")
def tiny_gpt2_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Other weights, the same tokenizer as ``tiny_gpt2``."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2-b"), arch="gpt2", seed=1)


@pytest.fixture(scope="module")
def tiny_other_vocab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tokenizer with another vocabulary: its tokens cut the text elsewhere."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-vocab"), arch="llama", vocab_size=300)


def _logits(manager, name: str, ids: list[int]):
    import torch

    model = manager.backend(name).memory_owner()
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


def _ids(gen) -> list[int]:
    return [*gen.prompt_ids, *(r.id for r in gen.tokens)]


def test_two_models_one_tokenizer(manager, tiny_gpt2, tiny_gpt2_b):
    manager.load(str(tiny_gpt2), name="a")
    manager.load(str(tiny_gpt2_b), name="b")
    streamed: dict[int, list[str]] = {0: [], 1: []}
    c = compare(PROMPT, models=["a", "b"], max_new_tokens=10, manager=manager,
                stream=lambda column, piece: streamed[column].append(piece))
    assert isinstance(c, Comparison) and [g.model for g in c] == ["a", "b"]
    assert ["".join(streamed[i]) for i in (0, 1)] == [g.text for g in c]
    for column, (gen, other) in enumerate(zip(c, ["b", "a"], strict=True)):
        cross = c.against(column)
        assert (cross.reference, cross.by) == (other, "tokens")
        ids = _ids(gen)
        n = len(gen.prompt_ids)
        assert len(cross.pieces) == len(gen.tokens) == len(ids) - n
        own, theirs = _logits(manager, gen.model, ids), _logits(manager, other, ids)
        for k, piece in enumerate(cross.pieces, start=n):  # position k - 1 predicts token k
            assert piece.own == pytest.approx(float(own[k - 1, ids[k]]), abs=1e-4)
            assert piece.other == pytest.approx(float(theirs[k - 1, ids[k]]), abs=1e-4)
        assert cross.deltas == pytest.approx([p.other - p.own for p in cross.pieces])
        # By hand: the first output position where the two models' argmax differ.
        greedy_own, greedy_other = own.argmax(-1).tolist(), theirs.argmax(-1).tolist()
        expected = next((k - n for k in range(n, len(ids))
                         if greedy_own[k - 1] != greedy_other[k - 1]), None)
        assert cross.divergence == expected


def test_different_tokenizers_align_on_characters(manager, tiny_gpt2, tiny_other_vocab):
    manager.load(str(tiny_gpt2), name="a")
    manager.load(str(tiny_other_vocab), name="v")
    c = compare(PROMPT, models=["a", "v"], max_new_tokens=12, chat=False, manager=manager,
                stream=False)
    assert c.by_characters
    tokenizers = {n: manager.backend(n).tokenizer for n in ("a", "v")}
    for column, gen in enumerate(c):
        cross = c.against(column)
        assert cross.by == "characters"
        other = cross.reference
        mine = tokenizers[gen.model]
        text = mine.decode(_ids(gen), skip_special_tokens=True)
        theirs = tokenizers[other](text)["input_ids"]
        their_lp = _logits(manager, other, theirs)
        prompt_chars = len(mine.decode(gen.prompt_ids, skip_special_tokens=True))
        # The pieces tile the output: together they are its text, in order.
        assert "".join(p.text for p in cross.pieces) == text[prompt_chars:prompt_chars + sum(
            len(p.text) for p in cross.pieces)]
        # Each piece's other log-probability is the sum over the other's tokens that end
        # inside it (a token ending inside a character counts where the character ends).
        full = tokenizers[other].decode(theirs, skip_special_tokens=True)
        ends = []
        for k in range(len(theirs)):
            prefix = tokenizers[other].decode(theirs[:k + 1], skip_special_tokens=True)
            ends.append(len(prefix) if full.startswith(prefix) else None)
        for k in range(len(ends) - 2, -1, -1):
            ends[k] = ends[k + 1] if ends[k] is None else ends[k]
        for p in cross.pieces:
            if p.offset >= prompt_chars:
                inside = [k for k in range(1, len(theirs))
                          if p.offset < ends[k] <= p.offset + len(p.text)]
                assert p.other == pytest.approx(
                    sum(float(their_lp[k - 1, theirs[k]]) for k in inside), abs=1e-3)
        # Own log-probabilities: the pieces together hold every output token once.
        assert sum(p.own for p in cross.pieces) == pytest.approx(
            sum(r.logprob for r in c[column].tokens), abs=1e-3) or not cross.pieces
    view = c.widget()
    assert "Aligned by characters" in view.note


def test_one_model_several_settings(manager, tiny_gpt2):
    manager.load(str(tiny_gpt2), name="a")
    c = compare(PROMPT, settings=[{"temperature": 0, "max_new_tokens": 4},
                                  {"temperature": 1.0, "seed": 3, "max_new_tokens": 9}],
                model="a", manager=manager, stream=False)
    assert c.labels == ("temperature=0, max_new_tokens=4",
                        "temperature=1.0, seed=3, max_new_tokens=9")
    assert [g.stats.new_tokens for g in c] == [4, 9]  # different lengths
    greedy, sampled = c.against(0), c.against(1)
    assert greedy.reference == "greedy" and greedy.divergence is None
    assert all(d == pytest.approx(0, abs=1e-5) for d in greedy.deltas)
    assert all(d <= 1e-6 for d in sampled.deltas)
    expected = next((j for j, r in enumerate(c[1].tokens) if r.rank != 1), None)
    assert sampled.divergence == expected


def test_demo_float32_against_bfloat16(manager):
    manager.load("demo")
    manager.load("demo", name="demo16", dtype="bfloat16")
    c = compare("The import statement", models=["demo", "demo16"], max_new_tokens=12,
                manager=manager, stream=False)
    cross = c.against(0)
    assert cross.by == "tokens" and cross.reference == "demo16"
    assert max(abs(d) for d in cross.deltas) < 0.5  # the same weights, rounded
    # lm.score re-tokenizes the text; a causal model's record at token k depends on the
    # ids up to k only, so they agree wherever the two id sequences still agree.
    for column, other in ((0, "demo16"), (1, "demo")):
        gen = c[column]
        ids, n = _ids(gen), len(gen.prompt_ids)
        for name, field in ((other, "other"), (gen.model, "own")):
            scored = score(gen.prompt + gen.text, model=name, manager=manager)
            same = next((k for k, (x, y) in enumerate(zip(ids, scored.ids, strict=False))
                         if x != y), min(len(ids), len(scored.ids)))
            assert same >= n + 5
            mine = [getattr(p, field) for p in c.against(column).pieces][:same - n]
            assert mine == pytest.approx([r.logprob for r in scored.tokens[n - 1:same - 1]],
                                         abs=1e-5)


def test_each_column_is_in_the_history(tiny_gpt2_b):
    a = lm.load(str(tiny_gpt2_b), name="hist_a").name
    b = lm.load(str(tiny_gpt2_b), name="hist_b", dtype="bfloat16").name
    try:
        c = lm.compare(PROMPT, models=[a, b], max_new_tokens=3, stream=False)
        ids = [g.id for g in c]
        assert None not in ids
        assert {r.id for r in lm.history(5)} >= set(ids)
    finally:
        lm.unload(a)
        lm.unload(b)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"models": ["a"]}, "two models or more"),
    ({"models": ["a", "a2"], "settings": [{}, {}]}, "not both"),
    ({"settings": [{"temperature": 0}]}, "two dicts or more"),
    ({"settings": [{"temperature": 0}, {"heat": 1}]}, "'heat' is not a generation setting"),
    ({"models": ["a", "a2"], "stream": 3}, "stream must be"),
])
def test_bad_input(manager, tiny_gpt2, kwargs, message):
    manager.load(str(tiny_gpt2), name="a")
    manager.load(str(tiny_gpt2), name="a2", dtype="bfloat16")
    with pytest.raises(InvalidOptionError, match=message):
        compare(PROMPT, manager=manager, max_new_tokens=2, **kwargs)


def _fake() -> Comparison:
    from llm_magic.generation import Generation, GenerationStats

    stats = GenerationStats(2, 2, 0.1, 20.0, 0.1, "length")
    gens = [Generation("<b>x</b>", "<i>", m, stats) for m in ("m1", "m2")]
    top = (1, "<b>", -0.1)
    pieces = (Piece("<b>", 1, 2, -0.5, -2.5, top, top), Piece("x</b>", 2, 3, -1.0, -0.2, top,
                                                               (2, "<s>", -0.1)))
    cross = [CrossScore(0, "m1", "m2", "tokens", pieces, 1), CrossScore(1, "m2", "m1", "tokens",
                                                                        pieces, None)]
    return Comparison(gens, ["m1", "<m2>"], cross, prompt="<i>")


def test_view_state_and_escaped_fallback():
    pytest.importorskip("anywidget")
    import numpy as np

    c = _fake()
    view = c.widget()
    assert view.labels == ["m1", "<m2>"] and view.counts == [2, 2]
    assert view.diverge == [1, -1] and view.references == ["m2", "m1"]
    assert np.frombuffer(view.deltas, "<f4").tolist() == pytest.approx([-2.0, 0.8, -2.0, 0.8])
    assert view.pieces[0] == ["<b>", "x</b>"]  # text: the page sets textContent
    data, _ = c._repr_mimebundle_()
    html = data["text/html"]
    assert "<b>" not in html and "&lt;b&gt;" in html and "&lt;m2&gt;" in html
    assert "▶" in html and "background:#" in html
    assert "Comparison of 2 generations" in data["text/plain"]


def test_view_says_in_words_what_each_column_is_shaded_against():
    pytest.importorskip("anywidget")
    view = _fake().widget()
    # Each column names its own reference: Δ = the reference's log p minus its own model's.
    assert view.captions[0].startswith("Shaded by Δ log p = log p under m2 − log p under m1")
    assert "log p under m1 − log p under m2" in view.captions[1]
    # Where the greedy choices first differ: a token number and the two choices, in words.
    assert view.firsts == ["The greedy choices first differ at token 2: m1 would pick '<b>', "
                           "m2 '<s>'.", "m2 and m1 would pick the same next token at every step."]
    assert view.tips[0][0].splitlines() == [
        "'<b>': Δ log p -2.000 nats (m2 found it less likely)",
        "m1: log p -0.500; likeliest '<b>'", "m2: log p -2.500; likeliest '<b>'"]


def test_settings_view_does_not_score_the_greedy_column_against_itself(manager, tiny_gpt2):
    pytest.importorskip("anywidget")
    manager.load(str(tiny_gpt2), name="a")
    c = compare(PROMPT, settings=[{"temperature": 0}, {"temperature": 1.0, "seed": 3}],
                model="a", max_new_tokens=8, manager=manager, stream=False)
    view = c.widget()
    assert view.captions[0] == "Every token is a's likeliest choice (greedy): nothing to shade."
    assert view.firsts[0] == ""
    assert view.captions[1].startswith("Shaded by Δ log p = log p of each token − log p of "
                                       "a's likeliest token at that step")
    j = c.divergence(1)
    assert j is not None  # a random tiny model samples off its greedy choice at once
    piece = c.against(1).pieces[j]
    assert view.firsts[1] == (f"First leaves the greedy choice at token {j + 1}: "
                              f"'{piece.text}' where a's likeliest was '{piece.own_top[1]}'.")


def test_shading_has_one_fixed_scale_in_nats():
    pytest.importorskip("anywidget")
    from llm_magic.widgets.compare import SCALE, colour

    big, small = _fake(), _fake()
    small.cross = tuple(CrossScore(s.column, s.model, s.reference, s.by, tuple(
        Piece(p.text, p.start, p.end, p.own, p.own + 0.05, p.own_top, p.other_top)
        for p in s.pieces), s.divergence) for s in small.cross)
    assert big.widget().scale == small.widget().scale == SCALE == 2.0
    # bfloat16 against float32 (0.05 nats) stays pale; 7.6 nats is no darker than 2.
    assert colour(0.05) == "#fbfcfe" and colour(7.6) == colour(2.0) != colour(1.0)
    html = small._repr_mimebundle_()[0]["text/html"]
    assert "Δ log p (nats)" in html and "saturate at ±2 nats" in html
    assert "background:#fbfcfe" in html  # the same scale in the snapshot


def _contrast(a: str, b: str) -> float:
    def lum(h: str) -> float:
        h = h.lstrip("#")
        h = "".join(c * 2 for c in h) if len(h) == 3 else h
        c = [int(h[i:i + 2], 16) / 255 for i in (0, 2, 4)]
        c = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in c]
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]

    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_snapshot_is_left_aligned_with_its_legend_and_readable_ink():
    pytest.importorskip("anywidget")
    import re

    from llm_magic.widgets.compare import colour, ink, shade

    for d in (-9, -2, -1, -0.3, 0, 0.3, 1, 2, 9):
        assert _contrast(colour(d), ink(shade(d))) >= 4.5, d
    html = _fake()._repr_mimebundle_()[0]["text/html"]
    assert "<table" not in html and "text-align:right" not in html
    assert html.startswith("<div class='llm-magic-compare' style='text-align:left")
    # Labelled as the live view first shows it: the prompt, the legend, the columns' captions.
    assert "<strong>Prompt</strong>" in html and "&lt;i&gt;" in html
    assert html.index("Δ log p (nats)") < html.index("m1</div>")
    assert "Shaded by Δ log p = log p under m2 − log p under m1" in html
    shaded = re.findall(r"background:(#[0-9a-f]{6});color:(#[0-9a-f]{3,6})", html)
    assert len(shaded) >= 4 + 7  # every piece and every swatch of the legend
    assert all(_contrast(back, fore) >= 4.5 for back, fore in shaded)


def test_streamed_view_updates_columns():
    pytest.importorskip("anywidget")
    from llm_magic.widgets.compare import CompareWidget

    view = CompareWidget(labels=["a", "b"], texts=["", ""], stats=["", ""])
    view.start(1)
    view.write(1, "<b>")
    view.write(1, " two")
    view.flush()
    assert view.texts == ["", "<b> two"] and view.active == 1
    assert "&lt;b&gt; two" in view._repr_mimebundle_()[0]["text/html"]


def test_colour_scale_is_symmetric():
    from llm_magic.widgets.compare import colour

    assert colour(0.0, 1.0) == "#ffffff"
    assert colour(-1.0, 1.0) != colour(1.0, 1.0)
    assert colour(math.nan, 1.0) == "#ffffff"


# -- a served model that sends no log-probabilities (a real `transformers serve`) ------------


def test_a_served_model_is_compared_and_its_text_scored_here(manager, served_demo):
    manager.load("demo")
    manager.load(served_demo.url, name="served", model=served_demo.model)
    c = compare("The with statement", models=["demo", "served"], max_new_tokens=12,
                manager=manager, stream=False)
    assert [g.model for g in c] == ["demo", "served"]
    assert c[1].text == c[0].text and c[1].tokens is None  # the same weights, greedy
    # The local column's only reference is served: it cannot score, and the column says so.
    assert c.against(0) is None
    assert c.column_notes[0] == ("Not shaded: its only reference, 'served' runs on a server, "
                                 "and llm_magic cannot ask a server to score a given text.")
    # The served column is read by the demo: its text after the prompt as the demo read it.
    read = c.against(1)
    assert (read.reference, read.scored_by, read.by) == ("demo", "reference", "tokens")
    assert c.column_notes[1].startswith("Scored by 'demo' alone: 'served' runs on a server")
    n = len(c[0].prompt_ids)
    tokenizer = manager.backend("demo").tokenizer
    ids = [*c[0].prompt_ids, *tokenizer(c[1].text, add_special_tokens=False)["input_ids"]]
    lp = _logits(manager, "demo", ids)
    assert "".join(p.text for p in read.pieces) == c[1].text
    assert len(read.pieces) == len(ids) - n
    for k, piece in enumerate(read.pieces, start=n):
        assert piece.other == pytest.approx(float(lp[k - 1, ids[k]]), abs=1e-4)
        assert math.isnan(piece.own)
    assert read.deltas == pytest.approx(
        [float(lp[k - 1, ids[k]] - lp[k - 1].max()) for k in range(n, len(ids))], abs=1e-4)
    # The served model is the demo: it took the demo's likeliest token at every step.
    assert read.deltas[:5] == pytest.approx([0.0] * 5, abs=1e-4)
    assert read.divergence is None or read.divergence >= 5
    # The view shows both columns and says which one could not be scored, and why.
    pytest.importorskip("anywidget")
    view = c.widget()
    assert view.counts == [0, len(read.pieces)] and view.texts == [g.text for g in c]
    assert view.column_notes == list(c.column_notes)
    assert view.captions[0] == "" and view.captions[1].startswith("Shaded by how demo reads")
    html = c._repr_mimebundle_()[0]["text/html"]
    assert "Not shaded: its only reference, &#x27;served&#x27; runs on a server" in html
    # One served model with several settings: nothing here can score; both columns are shown.
    s = compare("The with statement", settings=[{"max_new_tokens": 3}, {"max_new_tokens": 5}],
                model="served", manager=manager, stream=False)
    assert [g.stats.new_tokens for g in s] == [3, 5] and s.cross == ()
    assert all("no model of this comparison runs in this kernel" in note
               for note in s.column_notes)


# -- %%llm a b --compare ------------------------------------------------------------


@pytest.fixture
def ip(tiny_gpt2_b):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "llm_magic")
    # This module's own model: another module's load of the same files would be reused.
    shell.run_line_magic("llm", f"load {tiny_gpt2_b} --as ctiny")
    shell.run_line_magic("llm", f"load {tiny_gpt2_b} --as ctiny16 --dtype bfloat16")
    yield shell
    for name in ("ctiny", "ctiny16"):
        lm.get_manager().unload(name)
    shell.run_line_magic("unload_ext", "llm_magic")
    shell.user_ns.pop("_llm", None)


def test_compare_cell(ip, capsys):
    ip.run_cell_magic("llm", "ctiny ctiny16 --compare -n 5 --out both", "A list comprehension")
    result = ip.user_ns["_llm"]
    assert isinstance(result, Comparison) and result is ip.user_ns["both"]
    assert [g.model for g in result] == ["ctiny", "ctiny16"]
    assert all(g.stats.new_tokens == 5 for g in result)
    assert result.against(0).reference == "ctiny16"
    out = capsys.readouterr().out
    assert "── ctiny ──" in out and "── ctiny16 ──" in out


def test_compare_cell_with_a_served_model(ip, served_demo, capsys):
    lm.load(served_demo.url, name="cserved", model=served_demo.model)
    try:
        ip.run_cell_magic("llm", "ctiny cserved --compare -n 4", "A list comprehension")
        result = ip.user_ns["_llm"]
        assert [g.model for g in result] == ["ctiny", "cserved"]
        assert result.against(0) is None and "'cserved' runs on a server" in result.notes[0]
        assert result.against(1).reference == "ctiny"  # the served text, read by the tiny model
    finally:
        lm.unload("cserved")
    out = capsys.readouterr().out
    assert "── ctiny ──" in out and "── cserved ──" in out


@pytest.mark.parametrize(("line", "message"), [
    ("ctiny --compare", "two models or more"),
    ("ctiny ctiny16", "add --compare"),
    ("ctiny ctiny16 --compare --batch", "does not combine with --batch"),
    ("ctiny ctiny16 --compare --logprobs 3", "does not combine with --logprobs"),
    ("ctiny ctiny16 --compare -t -1", "temperature"),
])
def test_compare_cell_bad_input(ip, line, message):
    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match=message):
        ip.run_cell_magic("llm", line, "A list")


# -- python -m llm_magic.demo.train --small: a model to compare with the demo ------------


def test_trainer_small_model_compares_with_the_demo(tmp_path, manager, capsys):
    import json

    from llm_magic.demo.train import main

    out = tmp_path / "small"
    assert main(["--small", "--steps", "2", "--threads", "1", "--out", str(out), "--quiet"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["n_layer"], config["n_embd"]) == (2, 64)
    manager.load("demo")
    manager.load(str(out), name="small")
    c = compare("The import statement", models=["demo", "small"], max_new_tokens=6,
                manager=manager, stream=False)
    assert c.against(0).by == "tokens"  # the demo's own tokenizer: token by token
    assert len(c.against(0).pieces) == 6


def test_trainer_small_needs_its_own_directory(capsys):
    from llm_magic.demo.train import main

    with pytest.raises(SystemExit):
        main(["--small", "--steps", "1"])
    assert "give --out DIR" in capsys.readouterr().err
