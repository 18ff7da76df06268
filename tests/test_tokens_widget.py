"""The token probability view under ipywidgets' dummy comm, with real tiny models.

The buffers are decoded here with numpy and checked against the records they
came from; branching goes through the same message path as a click in the page
(a comm ``custom`` message, then ``update`` of ``current`` for the breadcrumbs).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import threading
from html import escape
from html.parser import HTMLParser

import numpy as np
import pytest

from llm_magic.analysis.tokens import legend, score, shaded_html
from llm_magic.backends.base import TokenRecord
from llm_magic.common.visible import visible
from llm_magic.errors import InvalidOptionError
from llm_magic.generation import Generation, GenerationStats, branch, generate
from llm_magic.manager import ModelManager
from llm_magic.widgets import tokens as tokens_module
from llm_magic.widgets._common import SHARED_ESM, STATIC
from llm_magic.widgets.tokens import SCORES_NOTE, SERVED_NOTE, TokensWidget, encode, stopped

MARKUP = "The <img src=x onerror=\"window.__xss=1\"> statement <b>binds</b> a name."
VIEW_MIME = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def models(tiny_gpt2, tiny_llama):
    m = ModelManager()
    m.load(str(tiny_gpt2), name="gpt2")
    m.load(str(tiny_llama), name="llama")
    m.load("demo", name="demo")
    yield m
    for name in m.names():
        m.unload(name)


def decoded(view: TokensWidget) -> list[TokenRecord]:
    """The records as the page reads them from the view's buffers."""
    k = view.k
    ids = np.frombuffer(view.ids, "<i4")
    top = np.frombuffer(view.top_ids, "<i4").reshape(len(ids), k)
    lps = np.frombuffer(view.logprobs, "<f2").astype(float).reshape(len(ids), k + 1)
    ranks = np.frombuffer(view.ranks, "<i4")
    ent = np.frombuffer(view.entropy, "<f2").astype(float)
    keys = np.frombuffer(view.string_ids, "<i4").tolist()
    assert len(keys) == len(view.strings) == len(set(keys))
    text = dict(zip(keys, view.strings, strict=True))
    out = []
    for i, token in enumerate(ids.tolist()):
        alts = tuple((int(j), text[int(j)], float(lps[i, n + 1]))
                     for n, j in enumerate(top[i]) if j != -1)
        out.append(TokenRecord(token, text[token], float(lps[i, 0]), int(ranks[i]) or None,
                               alts, None if math.isnan(ent[i]) else float(ent[i])))
    return out


def close(a: float, b: float) -> bool:
    """float16 keeps about three significant digits of a log-probability."""
    return a == b or abs(a - b) <= 2e-3 * max(1.0, abs(b))


def same_records(got: list[TokenRecord], want: tuple[TokenRecord, ...]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert (g.id, g.text, g.rank) == (w.id, w.text, w.rank)
        assert close(g.logprob, w.logprob)
        assert [(i, t) for i, t, _ in g.top] == [(i, t) for i, t, _ in w.top]
        assert all(close(a, b) for (_, _, a), (_, _, b) in zip(g.top, w.top, strict=True))
        assert (g.entropy is None) == (w.entropy is None)
        if w.entropy is not None:
            assert close(g.entropy, w.entropy)


def click(view: TokensWidget, **content) -> None:
    """A message from the page, as the comm delivers it."""
    view._handle_msg({"content": {"data": {"method": "custom", "content": content}},
                      "buffers": []})


def choose_crumb(view: TokensWidget, index: int) -> None:
    view._handle_msg({"content": {"data": {"method": "update", "state": {"current": index}}},
                      "buffers": []})


@pytest.mark.parametrize("name", ["gpt2", "llama", "demo"])
def test_payload_is_compact_and_decodes_to_the_records(models, name):
    g = generate("The import statement", model=name, max_new_tokens=16, logprobs=5,
                 manager=models)
    view = TokensWidget(g, manager=models)
    sizes = view.payload_bytes
    assert sizes["tokens"] == len(g.tokens) == 16
    assert sizes["binary"] / sizes["tokens"] == 42  # 4 + 5*4 ids, 6*2 log-probs, 4 + 2
    assert sizes["binary"] / sizes["tokens"] <= 60
    used = {r.id for r in g.tokens} | {i for r in g.tokens for i, _, _ in r.top}
    assert set(np.frombuffer(view.string_ids, "<i4").tolist()) == used  # only the ids used
    assert sizes["strings"] == 4 * len(used) + sum(len(s.encode()) for s in view.strings)
    same_records(decoded(view), g.tokens)
    assert view.k == 5 and view.mode == "raw" and view.branchable and view.note == ""
    assert view.lead == g.prompt and view.first_index == 0
    assert set(view.legends) == {"probability", "entropy", "surprisal"}
    assert "raw distribution" in view.legends["probability"]


def test_sampled_mode_says_so_and_keeps_impossible_alternatives(models):
    g = generate("The import statement", model="gpt2", max_new_tokens=8, logprobs=8,
                 temperature=0.8, top_k=3, seed=1, logprobs_mode="sampled", manager=models)
    view = TokensWidget(g, manager=models)
    assert view.mode == "sampled" and "after temperature" in view.legends["entropy"]
    got = decoded(view)
    same_records(got, g.tokens)
    assert any(lp == -math.inf for r in got for _, _, lp in r.top)  # outside top-k: p = 0


def test_two_ids_with_one_text_stay_apart():
    records = (TokenRecord(5, "a", -0.1, 1, ((5, "a", -0.1), (6, "a", -2.5))),
               TokenRecord(6, "a", -3.0, 9, ((5, "a", -0.2), (7, "b", -1.8))))
    p = encode(records, 2)
    assert p.strings == ("a", "a", "b") and np.frombuffer(p.string_ids, "<i4").tolist() == [5, 6, 7]
    assert np.frombuffer(p.ranks, "<i4").tolist() == [1, 9]


def test_served_records_without_ids_get_text_keys_and_the_note(models):
    g = generate("The import statement", model="demo", max_new_tokens=6, logprobs=3,
                 manager=models)
    served = dataclasses.replace(g, prompt_ids=None, tokens=tuple(
        dataclasses.replace(r, id=None, top=tuple((None, t, lp) for _, t, lp in r.top))
        for r in g.tokens))
    view = TokensWidget(served, manager=models)
    assert view.note == SERVED_NOTE and "tokenises it again" in view.note
    got = decoded(view)
    assert all(r.id <= -2 for r in got) and [r.text for r in got] == [r.text for r in g.tokens]
    assert TokensWidget(dataclasses.replace(g, prompt_ids=None)).note == SERVED_NOTE


def test_scores_show_alternatives_without_branches(models):
    s = score(MARKUP, model="demo", logprobs=5, manager=models)
    view = TokensWidget(s, manager=models)
    assert not view.branchable and view.note == SCORES_NOTE
    assert view.lead == s.first and view.first_index == 1
    same_records(decoded(view), s.tokens)
    assert view.lead + "".join(r.text for r in decoded(view)) == MARKUP
    click(view, action="branch", position=0, choice=1)
    assert "no branches" in view.error and view.state == "idle" and len(view.crumbs) == 1


def test_fallback_is_escaped_html_with_the_shading(models):
    s = score(MARKUP, model="demo", logprobs=5, manager=models)
    data, _ = TokensWidget(s, manager=models)._repr_mimebundle_()
    assert VIEW_MIME in data and data["text/plain"] == repr(s)
    html = data["text/html"]
    assert "<img" not in html and "<b>" not in html and "&lt;" in html
    assert "background:#" in html and escape("Shading: darker = less likely") in html
    bundle = s._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    assert VIEW_MIME in data and "<img" not in data["text/html"]


def test_a_generation_with_records_shows_the_view(models):
    g = generate("The import statement", model="demo", max_new_tokens=5, logprobs=2,
                 manager=models)
    bundle = g._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    assert VIEW_MIME in data and data["text/plain"] == g.text
    plain = generate("The import statement", model="demo", max_new_tokens=5, manager=models)
    with pytest.raises(InvalidOptionError, match="logprobs=K"):
        TokensWidget(plain)
    with pytest.raises(InvalidOptionError, match="Generation with records or Scores"):
        TokensWidget("text")  # type: ignore[arg-type]


def test_metric_is_validated():
    records = (TokenRecord(1, "x", -0.1, 1, ((1, "x", -0.1),)),)
    stats = GenerationStats(1, 1, None, None, 0.0, "length")
    g = Generation(text="x", prompt="p", model="m", stats=stats, tokens=records,
                   params={"logprobs": 1}, prompt_ids=(0,))
    view = TokensWidget(g)
    view.metric = "surprisal"
    with pytest.raises(Exception, match="metric must be one of"):
        view.metric = "colour"


@pytest.mark.parametrize("name", ["gpt2", "demo"])
def test_clicking_an_alternative_branches_and_crumbs_go_back(models, name):
    g = generate("The import statement", model=name, max_new_tokens=10, logprobs=4,
                 manager=models)
    view = TokensWidget(g, manager=models)
    root_ids = view.ids
    click(view, action="branch", position=3, choice=1)
    view.wait(60)
    assert view.error == "" and view.state == "idle"
    want = branch(g, 3, g.tokens[3].top[1][0], manager=models)  # greedy: the same branch
    made = view.results[1]
    assert made.parent == g.id and made.branch_at == 3
    assert [r.id for r in made.tokens] == [r.id for r in want.tokens]
    assert made.text == want.text == view.stream
    assert view.current == 1 and [c["state"] for c in view.crumbs] == ["done", "done"]
    assert view.crumbs[1]["position"] == 3 and view.crumbs[1]["parent"] == 0
    replaced = f"token 3 replaced by \u201c{visible(made.tokens[3].text)}\u201d"
    assert view.crumbs[0]["label"] == "original"
    assert view.crumbs[1]["label"] == f"branch 1: {replaced}"
    assert view.crumbs[1]["title"] == f"made from the original; {stopped(made.stats.stop_reason)}"
    same_records(decoded(view), made.tokens)
    assert view.title == f"{name}, branch 1: {replaced}; 10 tokens, " \
        "stopped: reached the token limit"
    # A branch of the branch, then the breadcrumbs back to the root.
    click(view, action="branch", position=6, choice=2)
    view.wait(60)
    assert view.error == "" and len(view.results) == 3
    assert view.results[2].parent == made.id and view.crumbs[2]["parent"] == 1
    assert view.crumbs[2]["label"].startswith("branch 2: token 6 replaced by \u201c")
    assert view.crumbs[2]["title"].startswith("made from branch 1; stopped: ")
    choose_crumb(view, 0)
    assert view.current == 0 and view.ids == root_ids
    same_records(decoded(view), g.tokens)
    assert view.html() and view.shown is g
    choose_crumb(view, 2)
    same_records(decoded(view), view.results[2].tokens)
    choose_crumb(view, 7)  # a crumb gone meanwhile: the last one
    assert view.current == 2


def test_a_click_returns_at_once_and_one_branch_runs_at_a_time(models, monkeypatch):
    g = generate("The import statement", model="demo", max_new_tokens=6, logprobs=3,
                 manager=models)
    view = TokensWidget(g, manager=models)
    release, threads = threading.Event(), []

    def slow_branch(gen, position, token, *, stream, stop_event, manager):
        threads.append(threading.current_thread())
        stream("partial")
        assert release.wait(30)
        return branch(gen, position, token, stream=stream, stop_event=stop_event,
                      manager=manager)

    monkeypatch.setattr(tokens_module, "branch_generation", slow_branch)
    click(view, action="branch", position=1, choice=1)  # returns while the branch waits
    assert view.state == "running" and view.crumbs[-1]["state"] == "running"
    assert view.current == 1
    click(view, action="branch", position=2, choice=1)
    assert "being generated" in view.error and len(view.crumbs) == 2
    choose_crumb(view, 0)  # the page may look at the root meanwhile
    assert view.ids == TokensWidget(g).ids
    assert view.crumbs[1]["label"] == "branch 1: token 1, generating\u2026"
    release.set()
    view.wait(60)
    assert threads and threads[0] is not threading.current_thread()
    assert view.state == "idle" and len(view.results) == 2 and view.current == 0


def test_a_failing_branch_is_one_line_and_the_view_goes_back(models, monkeypatch):
    g = generate("The import statement", model="demo", max_new_tokens=6, logprobs=3,
                 manager=models)
    view = TokensWidget(g, manager=models)

    def failing(*_args, **_kwargs):
        raise RuntimeError("the model went away\n  (unloaded)")

    monkeypatch.setattr(tokens_module, "branch_generation", failing)
    click(view, action="branch", position=1, choice=1)
    view.wait(60)
    assert view.error == "the model went away (unloaded)" and view.state == "error"
    assert len(view.crumbs) == 1 and view.current == 0
    for bad in ({"position": 99, "choice": 0}, {"position": 1, "choice": 9},
                {"position": "1", "choice": 0}):
        click(view, action="branch", **bad)
        assert view.error and "\n" not in view.error and len(view.crumbs) == 1
    click(view, action="explode")
    assert "Unknown action" in view.error
    with pytest.raises(InvalidOptionError, match="a generation of this view"):
        view.branch(1, 5, parent=dataclasses.replace(g))


def test_stop_keeps_the_branch_so_far(models):
    g = generate("The import statement", model="demo", max_new_tokens=6, logprobs=3,
                 manager=models)
    view = TokensWidget(g, manager=models)
    view.stop()  # nothing runs: nothing happens
    click(view, action="branch", position=0, choice=1)
    click(view, action="stop")
    view.wait(60)
    assert view.state == "idle" and len(view.results) == 2
    assert view.crumbs[1]["state"] in ("done", "stopped")
    view.close()


# -- words, units, contrast and right-to-left controls ---------------------------------

BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"


def test_titles_and_units_are_words_and_nats(models):
    g = generate("The import statement", model="demo", max_new_tokens=5, logprobs=2,
                 manager=models)
    view = TokensWidget(g, manager=models)
    assert view.title == "demo, the original; 5 tokens, stopped: reached the token limit"
    assert [stopped(r) for r in ("eos", "stop", "interrupted")] == [
        "stopped: the model ended the text", "stopped: reached a stop sequence",
        "stopped: interrupted"]
    s = score("The import statement binds a name.", model="demo", logprobs=2, manager=models)
    assert TokensWidget(s, manager=models).title == (
        f"demo: {len(s.ids)} tokens, {len(s.tokens)} scored; log-probability {s.logprob:.3f} nats, "
        f"perplexity {s.perplexity:.2f}")
    for metric in ("surprisal", "entropy"):
        assert "in nats" in view.legends[metric]
    assert not any("log2" in line or "bits" in line for line in view.legends.values())


def _records() -> tuple[TokenRecord, ...]:
    """Every shade from white to the darkest, a token with U+202E, one outside the top."""
    out = []
    for i, p in enumerate([0.999, 0.9, 0.7, 0.5, 0.3, 0.15, 0.05, 0.01, 0.001]):
        lp = math.log(p)
        out.append(TokenRecord(i, f" w{i}", lp, 1, ((i, f" w{i}", lp), (99, " x", lp - 1)),
                               entropy=float(i)))
    out.append(TokenRecord(50, "\u202eevil", -2.0, 1, ((50, "\u202eevil", -2.0),), 0.5))
    out.append(TokenRecord(53, ".\n", -0.5, 1, ((53, ".\n", -0.5),), 0.1))
    out.append(TokenRecord(51, " far", -9.0, 7, ((52, "\u2067y", -0.1),), 0.2))
    return tuple(out)


class _Spans(HTMLParser):
    """The style and text of every element of a snapshot, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.items: list[dict[str, str]] = []
        self.stack: list[dict[str, str]] = []

    def handle_starttag(self, tag, attrs):
        item = {"tag": tag, **{k: v or "" for k, v in attrs}, "text": ""}
        self.items.append(item)
        self.stack.append(item)

    def handle_endtag(self, tag):
        self.stack.pop()

    def handle_data(self, data):
        if self.stack:
            self.stack[-1]["text"] += data


def _contrast(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    """WCAG 2 contrast ratio, written out here on its own."""
    def lum(c):
        lin = [v / 255 / 12.92 if v / 255 <= 0.03928 else ((v / 255 + 0.055) / 1.055) ** 2.4
               for v in c]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def _hex(colour: str) -> tuple[int, ...]:
    colour = colour.strip().lstrip("#")
    if len(colour) == 3:
        colour = "".join(ch * 2 for ch in colour)
    return tuple(int(colour[i:i + 2], 16) for i in (0, 2, 4))


@pytest.mark.parametrize("metric", ["probability", "entropy", "surprisal"])
def test_the_snapshot_is_labelled_isolated_and_readable(metric):
    records = _records()
    html = shaded_html(records, lead="Say \u202eevil\u202c twice\n", metric=metric,
                       title="demo, the original; 11 tokens, stopped: reached the token limit")
    assert not any(ch in html for ch in BIDI), "a bidi control reached the page"
    parser = _Spans()
    parser.feed(html)
    root = parser.items[0]
    assert root["dir"] == "ltr" and "text-align:left" in root["style"]
    texts = [i["text"] for i in parser.items if i["text"]]
    assert texts[0] == (f"Token probabilities, shaded by {metric}; point at a token for its "
                        "alternatives.")
    assert texts[1] == "demo, the original; 11 tokens, stopped: reached the token limit"
    assert texts[-1] == legend(metric, "raw")
    lead, *tokens = [i for i in parser.items if "unicode-bidi:isolate" in i.get("style", "")]
    assert lead["text"] == "Say \\u202eevil\\u202c twice\u21b5\n"
    assert [t["text"] for t in tokens] == [visible(r.text) for r in records]
    assert tokens[-3]["text"] == "\\u202eevil" and "\\u2067y" in tokens[-1]["title"]
    assert ".\u21b5</span><br>" in html  # the box, then the break, as in the live view
    styles = [dict(part.split(":", 1) for part in t["style"].split(";") if part)
              for t in tokens]
    ratios = [_contrast(_hex(s["background"]), _hex(s["color"])) for s in styles]
    assert min(ratios) >= 4.5, ratios
    assert len({s["background"] for s in styles}) > 5  # the whole ramp is there
    assert "dashed" in styles[-1]["outline"] and "outline" not in styles[0]


@pytest.mark.skipif(shutil.which("node") is None, reason="no node on this machine")
def test_the_snapshot_inks_text_as_the_page_does(tmp_path):
    from llm_magic.analysis.tokens import _colour
    from llm_magic.common.heatmap import ink

    colours = ([list(_colour(x / 50)) for x in range(51)]
               + [[r, g, b] for r in range(0, 256, 51) for g in range(0, 256, 51)
                  for b in range(0, 256, 85)])
    script = tmp_path / "ink.js"
    script.write_text((STATIC / SHARED_ESM).read_text() + (STATIC / "tokens.js").read_text()
                      .split("// One branch's records")[0].replace("export default", "//")
                      + f"\nconst cs = {json.dumps(colours)};\n"
                      "const ramp = cs.slice(0, 51).map((c, i) => shadeColour(i / 50));\n"
                      "process.stdout.write(JSON.stringify({ink: cs.map(inkOn), ramp}));\n")
    run = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert run.returncode == 0, run.stderr
    page = json.loads(run.stdout)
    assert page["ink"] == [ink(c) for c in colours]
    assert page["ramp"] == colours[:51]


def test_a_prompt_with_a_right_to_left_override_shows_it_written_out(models):
    g = generate("Say \u202eevil", model="demo", max_new_tokens=4, logprobs=2, manager=models)
    view = TokensWidget(g, manager=models)
    html = view.html()
    assert "Say \\u202eevil" in html and "\u202e" not in html
