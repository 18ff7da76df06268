"""The token probability view in JupyterLab and Notebook 7, driven in Chromium.

On the shared helper (``_browser.py``): a notebook makes a generation with
``logprobs=5`` and prints its records; every number the page shows is checked
against those records. Hovering and keyboard focus show the alternatives,
the toggle reshades, clicking an alternative streams a branch from the kernel
and the breadcrumbs go back; a scored text full of markup shows as text; the
page asks nothing of any host but loopback.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

VIEW = ".llm-tokens"
MARKUP = ("The <img src=x onerror=\"window.__xss='img'\"> tag "
          "<script>window.__xss='s'</script> ends.")
SHOWN = {"\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"}

RECORDS = '''import json
def records(rs):
    print(json.dumps([{"id": r.id, "text": r.text, "lp": r.logprob, "rank": r.rank,
                       "top": r.top, "ent": r.entropy, "others": r.others, "in_top": r.in_top}
                      for r in rs]))'''

# The side panel as the page shows it: the token it is about and each row of the table.
PANEL = """root => {
  const panel = root.querySelector('.llm-tokens-panel');
  const rows = Array.from(panel.querySelectorAll('tbody tr')).map(tr => ({
    cls: tr.className, rank: tr.dataset.rank, id: tr.dataset.id,
    rankText: tr.querySelector('.llm-tokens-rank').textContent,
    prob: tr.querySelector('.llm-tokens-prob').textContent,
    token: tr.querySelector('.llm-tokens-alt-token').textContent,
    mark: tr.querySelector('.llm-tokens-mark').textContent,
    button: !!tr.querySelector('button'),
  }));
  const head = panel.querySelector('.llm-tokens-panel-head').textContent;
  return {index: panel.dataset.index, head, rows};
}"""

# Every distinct text of the running branch, recorded as the page shows it.
WATCH_STREAM = """root => {
  window._streamed = [];
  const target = root.querySelector('.llm-tokens-streamed');
  const record = () => {
    if (root.dataset.view !== 'stream') return;
    const n = target.textContent.length;
    const seen = window._streamed;
    if (n > 0 && seen[seen.length - 1] !== n) seen.push(n);
  };
  new MutationObserver(record).observe(target, {subtree: true, childList: true,
                                                characterData: true});
}"""


# Notebook 7 raises these on its own page, with or without any view of llm_magic.
NOTEBOOK7_OWN = ("Cannot read properties of undefined (reading 'schema')",
                 "Command 'filebrowser:open-path' not registered.")


def page_errors(nb: Any) -> list[str]:
    return [e for e in nb.errors if not (nb.app == "notebook" and e in NOTEBOOK7_OWN)]


def visible(text: str) -> str:
    return "".join(SHOWN.get(ch, ch) for ch in text)


def percent(shown: str) -> float:
    assert shown.endswith(" %"), shown
    return float(shown[:-2])


def printed(nb: Any, index: int, timeout: float = 120) -> Any:
    outputs = nb.run_and_wait(index, timeout=timeout)
    return [json.loads(line) for out in outputs for line in out.splitlines() if line.strip()]


def check_panel(nb: Any, root: Any, index: int, record: dict[str, Any], branchable: bool,
                first: int = 0) -> None:
    """The panel shows token ``index``: each alternative's rank, %, text; others; the chosen."""
    nb.page.wait_for_function(
        "([root, i]) => root.querySelector('.llm-tokens-panel').dataset.index === String(i)",
        arg=[root.element_handle(), index])
    panel = root.evaluate(PANEL)
    rows = panel["rows"]
    top = record["top"]
    alternatives = [r for r in rows if "llm-tokens-alt" in r["cls"]
                    and "llm-tokens-outside" not in r["cls"]]
    assert len(alternatives) == len(top)
    for n, (row, (token_id, text, lp)) in enumerate(zip(alternatives, top, strict=True), 1):
        assert (row["rank"], row["rankText"], row["id"]) == (str(n), str(n), str(token_id))
        assert row["token"] == visible(text)
        assert abs(percent(row["prob"]) - 100 * math.exp(lp)) < 0.1, (row, lp)
        chosen = token_id == record["id"]
        assert ("llm-tokens-chosen" in row["cls"]) == chosen
        assert ("chosen" in row["mark"]) == chosen
        assert row["button"] == (branchable and not chosen)
    outside = [r for r in rows if "llm-tokens-outside" in r["cls"]]
    if record["in_top"]:
        assert outside == [] and "outside the top" not in panel["head"]
    else:
        (row,) = outside
        assert row["token"] == visible(record["text"]) and "outside" in row["mark"]
        assert row["rankText"] == str(record["rank"] or "?")
        assert abs(percent(row["prob"]) - 100 * math.exp(record["lp"])) < 0.1
        assert f"outside the top {len(top)}" in panel["head"]
    others = rows[-1]
    assert others["token"] == "others" and "llm-tokens-others" in others["cls"]
    assert abs(percent(others["prob"]) - 100 * record["others"]) < 0.2
    assert f"token {index + first} " in panel["head"]  # a score's records start at token 1


def tokens_shown(root: Any) -> list[str]:
    return root.locator(".llm-tokens-text .llm-tokens-token").all_text_contents()


def wait_revision(nb: Any, root: Any, before: str) -> None:
    nb.page.wait_for_function(
        "([root, before]) => root.dataset.revision !== before && root.dataset.view === 'tokens'",
        arg=[root.element_handle(), before])


@pytest.mark.parametrize("app", ["lab", "notebook"])
def test_shading_alternatives_focus_and_a_branch(open_notebook, app):
    nb = open_notebook([
        "import llm_magic as lm\nfrom llm_magic.analysis.tokens import legend, view\n"
        "lm.load('demo');\n" + RECORDS,
        "g = lm.generate('The import statement', model='demo', max_new_tokens=12, logprobs=5)\n"
        "v = view(g)\nv",
        "records(g.tokens)",
        "print(json.dumps([v.metric, legend('surprisal', 'raw')]))",
        "b = v.results[1]\nrecords(b.tokens)\nprint(json.dumps([b.branch_at, b.parent == g.id]))",
    ], app=app)
    nb.run_and_wait(0, timeout=180)
    nb.run_and_wait(1)
    root = nb.cell(1).locator(VIEW)
    root.locator(".llm-tokens-token").first.wait_for()
    (records,) = printed(nb, 2)
    assert len(records) == 12

    # The text, each token shaded by 1 - p, with its leading space kept.
    spans = root.locator(".llm-tokens-text .llm-tokens-token")
    assert spans.count() == 12
    assert tokens_shown(root) == [visible(r["text"]) for r in records]
    assert root.locator(".llm-tokens-lead").first.text_content() == "The import statement"
    shades = [float(s) for s in spans.evaluate_all("ss => ss.map(s => s.dataset.shade)")]
    for shade, r in zip(shades, records, strict=True):
        assert abs(shade - (1 - math.exp(r["lp"]))) < 5e-3
    colours = set(spans.evaluate_all("ss => ss.map(s => getComputedStyle(s).backgroundColor)"))
    assert len(colours) > 1 and colours != {"rgb(255, 255, 255)"}, colours
    legend = root.locator(".llm-tokens-legend").inner_text()
    assert "less likely" in legend and "raw distribution" in legend
    assert root.locator(".llm-tokens-token.llm-tokens-outside").count() == 0  # greedy: rank 1

    # Hover shows a token's alternatives; keyboard focus moves the panel too.
    spans.nth(3).hover()
    check_panel(nb, root, 3, records[3], branchable=True)
    spans.nth(0).focus()
    check_panel(nb, root, 0, records[0], branchable=True)
    nb.page.keyboard.press("ArrowRight")
    check_panel(nb, root, 1, records[1], branchable=True)
    nb.page.keyboard.press("Tab")
    check_panel(nb, root, 2, records[2], branchable=True)
    assert root.evaluate("r => document.activeElement.dataset.index") == "2"
    nb.screenshot(f"tokens-panel-{app}")

    # The toggle shades by surprisal and says so; the kernel's view knows the choice.
    root.locator("button[data-metric='surprisal']").click()
    nb.page.wait_for_function("r => r.dataset.metric === 'surprisal'", arg=root.element_handle())
    bits = [-r["lp"] / math.log(2) for r in records]
    shades = [float(s) for s in spans.evaluate_all("ss => ss.map(s => s.dataset.shade)")]
    for shade, b in zip(shades, bits, strict=True):
        assert abs(shade - b / max(bits)) < 5e-3
    metric, surprisal_legend = printed(nb, 3)[0]
    assert metric == "surprisal" and root.locator(".llm-tokens-legend").inner_text() == \
        surprisal_legend

    # Click an alternative: the kernel branches, the view shows the branch, crumbs go back.
    before = root.get_attribute("data-revision")
    spans.nth(4).click()
    check_panel(nb, root, 4, records[4], branchable=True)
    alt_id, alt_text, _ = records[4]["top"][1]
    root.locator(".llm-tokens-panel tr.llm-tokens-alt[data-rank='2'] button").click()
    crumbs = root.locator(".llm-tokens-crumb")
    crumbs.nth(1).and_(root.locator("[data-state='done']")).wait_for()
    wait_revision(nb, root, before)
    branch = printed(nb, 4)
    b_records, (at, from_g) = branch[0], branch[1]
    assert at == 4 and from_g
    assert b_records[4]["id"] == alt_id and b_records[:4] == records[:4]
    assert tokens_shown(root) == [visible(r["text"]) for r in b_records]
    assert crumbs.nth(1).get_attribute("aria-current") == "true"
    assert "@4" in crumbs.nth(1).inner_text() and visible(alt_text) in crumbs.nth(1).inner_text()
    spans.nth(6).hover()
    check_panel(nb, root, 6, b_records[6], branchable=True)
    nb.screenshot(f"tokens-branch-{app}")
    before = root.get_attribute("data-revision")
    crumbs.nth(0).click()
    wait_revision(nb, root, before)
    assert tokens_shown(root) == [visible(r["text"]) for r in records]
    assert crumbs.nth(0).get_attribute("aria-current") == "true"
    assert root.locator(".llm-tokens-error").inner_text() == ""
    assert nb.outside_requests() == [], "the page fetched from outside loopback"
    assert page_errors(nb) == [], nb.errors


@pytest.fixture(scope="module")
def endless_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small GPT-2 that never ends early (no end-of-text id it could pick)."""
    from _models import build_tiny_model

    out = build_tiny_model(tmp_path_factory.mktemp("tokens-lab-model"), arch="gpt2",
                           context=2048, seed=0, n_embd=64)
    for name in ("config.json", "generation_config.json"):
        config = json.loads((out / name).read_text())
        config["eos_token_id"] = 10**6
        (out / name).write_text(json.dumps(config))
    return out


def test_a_clicked_branch_streams_into_the_view(open_notebook, endless_model):
    nb = open_notebook([
        f"import llm_magic as lm\nfrom llm_magic.analysis.tokens import view\n"
        f"lm.load({str(endless_model)!r}, name='endless');",
        "g = lm.generate('Hello', model='endless', max_new_tokens=800, logprobs=5)\n"
        "v = view(g)\nv",
        "b = v.results[1]\n"
        "print(b.branch_at, len(b.tokens), b.stats.new_tokens, b.text == v.stream)",
    ])
    nb.run_and_wait(0, timeout=180)
    nb.run_and_wait(1, timeout=240)
    root = nb.cell(1).locator(VIEW)
    spans = root.locator(".llm-tokens-text .llm-tokens-token")
    spans.first.wait_for()
    assert spans.count() == 800
    root.evaluate(WATCH_STREAM)
    before = root.get_attribute("data-revision")
    spans.nth(2).click()
    root.locator(".llm-tokens-panel tr.llm-tokens-alt[data-rank='3'] button").click()
    stream = root.locator(".llm-tokens-stream")
    wait_revision(nb, root, before)
    seen = nb.page.evaluate("window._streamed")
    assert len(seen) >= 2 and seen == sorted(seen), f"the branch did not stream: {seen}"
    assert stream.is_hidden()
    assert root.locator(".llm-tokens-crumb").count() == 2
    assert printed_line(nb, 2) == "2 800 797 True"
    assert spans.count() == 800
    assert nb.outside_requests() == []
    assert page_errors(nb) == [], nb.errors


def printed_line(nb: Any, index: int) -> str:
    return " ".join(out.strip() for out in nb.run_and_wait(index))


@pytest.mark.parametrize("app", ["lab", "notebook"])
def test_markup_tokens_of_a_score_show_as_text(open_notebook, app):
    nb = open_notebook([
        "import llm_magic as lm\nlm.load('demo');\n" + RECORDS,
        f"s = lm.score({MARKUP!r}, model='demo', logprobs=5)\ns",
        "records(s.tokens)\nprint(json.dumps(s.first))",
    ], app=app)
    nb.run_and_wait(0, timeout=180)
    nb.run_and_wait(1)
    root = nb.cell(1).locator(VIEW)
    spans = root.locator(".llm-tokens-text .llm-tokens-token")
    spans.first.wait_for()
    records, first = printed(nb, 2)
    shown = root.locator(".llm-tokens-lead").first.text_content() + "".join(tokens_shown(root))
    assert shown == MARKUP and first + "".join(r["text"] for r in records) == MARKUP
    assert nb.page.evaluate("window.__xss") is None, "a script from the data ran"
    assert root.locator("img, script").count() == 0
    assert nb.page.locator("img[src='x']").count() == 0
    # A scored token outside the top 5 is flagged; its alternatives are shown, not clickable.
    outside = [i for i, r in enumerate(records) if not r["in_top"]]
    assert outside, "every scored token was in the top 5: pick a stranger text"
    flagged = spans.evaluate_all("ss => ss.flatMap((s, i) => "
                                 "s.classList.contains('llm-tokens-outside') ? [i] : [])")
    assert flagged == outside
    spans.nth(outside[0]).hover()
    check_panel(nb, root, outside[0], records[outside[0]], branchable=False, first=1)
    spans.nth(1).focus()
    check_panel(nb, root, 1, records[1], branchable=False, first=1)
    assert "only a generation branches" in root.locator(".llm-tokens-note").inner_text()
    assert root.locator(".llm-tokens-crumbs").is_hidden()
    root.scroll_into_view_if_needed()
    nb.screenshot(f"tokens-markup-{app}")
    assert nb.outside_requests() == []
    assert page_errors(nb) == [], nb.errors
