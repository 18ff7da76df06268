"""The token probability view in JupyterLab and Notebook 7, driven in Chromium.

On the shared helper (``_browser.py``): a notebook makes a generation with
``logprobs=5`` and prints its records; every number the page shows is checked
against those records. A click or keyboard focus pins a token's alternatives
(a resting pointer only previews them, so a pointer travelling to the panel
branches the token it left), the toggle reshades, clicking an alternative
streams a branch from the kernel and the breadcrumbs go back, even for a click
pressed while the branch ran; text on every shade keeps WCAG AA contrast; a
right-to-left override leaves the tokens in order; the view fits 1280 and
900 px; a scored text full of markup shows as text; the page asks nothing of
any host but loopback.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from llm_magic.common.visible import visible

VIEW = ".llm-tokens"
MARKUP = ("The <img src=x onerror=\"window.__xss='img'\"> tag "
          "<script>window.__xss='s'</script> ends.")

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
    # The header names its token in words; a score's records start at token 1.
    assert f"token {index + first}: {visible(record['text'])} \u2014 alternatives" in panel["head"]


# Each token's WCAG contrast ratio between its text colour and its shade, as the page paints them.
CONTRASTS = """ss => ss.map(s => {
  const rgbOf = (v) => v.match(/\\d+/g).slice(0, 3).map(Number);
  const lum = (c) => {
    const l = c.map(v => v / 255).map(v => v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
    return 0.2126 * l[0] + 0.7152 * l[1] + 0.0722 * l[2];
  };
  const style = getComputedStyle(s);
  const [a, b] = [lum(rgbOf(style.color)), lum(rgbOf(style.backgroundColor))];
  return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
})"""


def contrasts(spans: Any) -> list[float]:
    return spans.evaluate_all(CONTRASTS)  # type: ignore[no-any-return]


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

    # Text on every shade keeps WCAG AA contrast; the view says how to branch.
    assert min(contrasts(spans)) >= 4.5
    assert root.locator(".llm-tokens-help").inner_text() == (
        "Click a token to pin it, then click an alternative to branch from there.")

    # A pointer resting on a token previews its alternatives; keyboard focus pins the panel.
    spans.nth(3).hover()
    check_panel(nb, root, 3, records[3], branchable=True)
    assert root.locator(".llm-tokens-panel").get_attribute("data-pinned") == "false"
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
    surprisal = [-r["lp"] for r in records]  # nats
    shades = [float(s) for s in spans.evaluate_all("ss => ss.map(s => s.dataset.shade)")]
    for shade, nats in zip(shades, surprisal, strict=True):
        assert abs(shade - nats / max(surprisal)) < 5e-3
    assert min(contrasts(spans)) >= 4.5
    metric, surprisal_legend = printed(nb, 3)[0]
    assert metric == "surprisal" and root.locator(".llm-tokens-legend").inner_text() == \
        surprisal_legend

    # Click an alternative: the kernel branches, the view shows the branch, crumbs go back.
    before = root.get_attribute("data-revision")
    spans.nth(4).click()
    check_panel(nb, root, 4, records[4], branchable=True)
    root.evaluate("r => { window._third = r.querySelector("
                  "'.llm-tokens-panel tr[data-rank=\"3\"] button'); }")
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
    assert crumbs.nth(1).inner_text() == \
        f"branch 1: token 4 replaced by \u201c{visible(alt_text)}\u201d"
    # The pin outlives the switch: token 4 of the branch, its new token marked chosen, in
    # the same rows as before (updated in place: a press on one as it changes still lands).
    check_panel(nb, root, 4, b_records[4], branchable=True)
    assert root.evaluate("r => r.querySelector('.llm-tokens-panel tr[data-rank=\"3\"] button')"
                         " === window._third")
    spans.nth(6).click()
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
    # Pressed on "original" while the branch runs, released once it has ended: the
    # breadcrumbs changed in between, in place, so the click still lands.
    crumbs = root.locator(".llm-tokens-crumb")
    crumbs.nth(1).wait_for()
    root.evaluate("r => { window._original = r.querySelector('.llm-tokens-crumb'); }")
    nb.page.mouse.move(*centre(crumbs.nth(0)))
    nb.page.mouse.down()
    assert root.get_attribute("data-view") == "stream", "the branch ended before the press"
    wait_revision(nb, root, before)
    assert crumbs.nth(1).get_attribute("data-state") == "done"
    before = root.get_attribute("data-revision")
    nb.page.mouse.up()
    wait_revision(nb, root, before)
    assert crumbs.nth(0).get_attribute("aria-current") == "true"
    assert root.evaluate("r => r.querySelector('.llm-tokens-crumb') === window._original")
    seen = nb.page.evaluate("window._streamed")
    assert len(seen) >= 2 and seen == sorted(seen), f"the branch did not stream: {seen}"
    assert stream.is_hidden()
    assert crumbs.count() == 2
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


# -- what the pointer meant, right-to-left controls, the width of the page ---------------

PANEL_AT = """([root, i, pinned]) => {
  const panel = root.querySelector('.llm-tokens-panel');
  return panel.dataset.index === String(i) && panel.dataset.pinned === String(pinned);
}"""


def centre(locator: Any) -> tuple[float, float]:
    box = locator.bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def panel_index(root: Any) -> str | None:
    return root.evaluate("r => r.querySelector('.llm-tokens-panel').dataset.index ?? null")


def branch_button(root: Any, rank: int) -> Any:
    return root.locator(f".llm-tokens-panel tr.llm-tokens-alt[data-rank='{rank}'] button")


def travel_and_click(nb: Any, root: Any, over: Any, target: Any) -> None:
    """Move the pointer in small steps over ``over``, then onto ``target``, and click there."""
    nb.page.mouse.move(*centre(over), steps=4)
    x, y = centre(target)
    nb.page.mouse.move(x, y, steps=8)
    nb.page.mouse.down()
    nb.page.mouse.up()


@pytest.mark.parametrize("app", ["lab", "notebook"])
def test_a_pointer_travelling_to_the_panel_branches_the_token_it_meant(open_notebook, app):
    nb = open_notebook([
        "import llm_magic as lm\nfrom llm_magic.analysis.tokens import view\n"
        "lm.load('demo');\n" + RECORDS,
        "g = lm.generate('The import statement', model='demo', max_new_tokens=12, logprobs=5)\n"
        "v = view(g)\nv",
        "records(g.tokens)",
        "b = v.results[1]\nrecords(b.tokens)\nprint(json.dumps([b.branch_at, b.parent == g.id]))",
        "c = v.results[2]\nrecords(c.tokens)\nprint(json.dumps([c.branch_at, c.parent == b.id]))",
    ], app=app)
    nb.run_and_wait(0, timeout=180)
    nb.run_and_wait(1)
    root = nb.cell(1).locator(VIEW)
    spans = root.locator(".llm-tokens-text .llm-tokens-token")
    spans.first.wait_for()
    (records,) = printed(nb, 2)
    handle = root.element_handle()

    # A preview: the pointer rests on token 2, then crosses token 3 on its way to the panel.
    spans.nth(2).hover()
    nb.page.wait_for_function(PANEL_AT, arg=[handle, 2, False])
    assert centre(spans.nth(3))[0] > centre(spans.nth(2))[0]  # token 3 lies on the way
    before = root.get_attribute("data-revision")
    travel_and_click(nb, root, spans.nth(3), branch_button(root, 2))
    wait_revision(nb, root, before)
    b_records, (at, from_g) = printed(nb, 3)
    assert (at, from_g) == (2, True), "the branch is not at the token the pointer left"
    assert b_records[2]["id"] == records[2]["top"][1][0]

    # A pin: click token 5, rest on token 6 longer than a preview takes, then click.
    spans.nth(5).click()
    nb.page.wait_for_function(PANEL_AT, arg=[handle, 5, True])
    nb.page.mouse.move(*centre(spans.nth(6)), steps=4)
    nb.page.wait_for_timeout(900)  # three times the preview's delay: the pin holds
    assert panel_index(root) == "5"
    assert spans.nth(5).get_attribute("aria-pressed") == "true"
    assert "llm-tokens-pinned" in spans.nth(5).get_attribute("class")
    assert "llm-tokens-focused" not in spans.nth(6).get_attribute("class")
    head = root.locator(".llm-tokens-panel-head").inner_text()
    assert f"token 5: {visible(b_records[5]['text'])} \u2014 alternatives" in head
    assert "pinned" in head
    before = root.get_attribute("data-revision")
    travel_and_click(nb, root, spans.nth(7), branch_button(root, 2))
    wait_revision(nb, root, before)
    c_records, (at, from_b) = printed(nb, 4)
    assert (at, from_b) == (5, True)
    assert c_records[5]["id"] == b_records[5]["top"][1][0]
    assert root.locator(".llm-tokens-crumb").nth(2).inner_text().startswith("branch 2: token 5 ")

    # Unpinned, a resting pointer previews again.
    root.locator(".llm-tokens-unpin").click()
    spans.nth(8).hover()
    nb.page.wait_for_function(PANEL_AT, arg=[handle, 8, False])
    assert root.locator(".llm-tokens-error").inner_text() == ""
    assert page_errors(nb) == [], nb.errors


# The boxes of a view's text, [left, top, right, bottom] of each one's first and last line.
BOXES = """els => els.map(e => {
  const rs = Array.from(e.getClientRects());
  const [a, z] = [rs[0], rs[rs.length - 1]];
  return {first: [a.left, a.top, a.right, a.bottom], last: [z.left, z.top, z.right, z.bottom],
          bidi: getComputedStyle(e).unicodeBidi};
})"""


def out_of_order(boxes: list[dict[str, Any]]) -> list[int]:
    """Where a box does not start right of the one before on its line, or on a later line."""
    wrong = []
    for i, (before, after) in enumerate(zip(boxes, boxes[1:], strict=False), 1):
        left, top, _, bottom = after["first"]
        b_left, b_top, b_right, b_bottom = before["last"]
        same_line = min(bottom, b_bottom) - max(top, b_top) > 0  # they overlap vertically
        if (same_line and left < b_right - 1) or (not same_line and top < b_bottom - 1):
            wrong.append(i)
    return wrong


ODD = ["\u202eevil", " \u05e9\u05dc\u05d5\u05dd", "\u2067\u05e2\u05d5\u05dc\u05dd", " ok\u202c"]


def test_a_right_to_left_override_leaves_the_tokens_in_order(open_notebook):
    nb = open_notebook([
        "import dataclasses\nimport llm_magic as lm\nfrom IPython.display import HTML\n"
        "from llm_magic.analysis.tokens import view\nlm.load('demo');",
        # Four tokens of odd text, each under an id of its own, after a prompt with U+202E.
        f"g = lm.generate('Say \\u202e the import', model='demo', max_new_tokens=10, "
        f"logprobs=3)\nodd = {ODD!r}\n"
        "g = dataclasses.replace(g, tokens=tuple(dataclasses.replace(\n"
        "    r, id=10**6 + i, text=odd[i], top=((10**6 + i, odd[i], r.logprob),) + r.top[1:])\n"
        "    if i < len(odd) else r for i, r in enumerate(g.tokens)))\nv = view(g)\nv",
        "HTML(v.html())",
    ])
    nb.run_and_wait(0, timeout=180)
    nb.run_and_wait(1)
    root = nb.cell(1).locator(VIEW)
    spans = root.locator(".llm-tokens-text .llm-tokens-token")
    spans.first.wait_for()
    lead = root.locator(".llm-tokens-text .llm-tokens-lead")
    assert lead.text_content() == "Say \\u202e the import"
    assert tokens_shown(root)[:4] == [visible(t) for t in ODD]
    boxes = root.locator(".llm-tokens-text > span").evaluate_all(BOXES)
    assert len(boxes) == 11 and out_of_order(boxes) == [], boxes
    assert {b["bidi"] for b in boxes} == {"isolate"}
    spans.nth(0).click()
    assert "token 0: \\u202eevil \u2014 alternatives" in root.locator(
        ".llm-tokens-panel-head").inner_text()
    assert out_of_order(root.locator(".llm-tokens-alts .llm-tokens-box").evaluate_all(BOXES)
                        ) == []

    # The static snapshot: the same order, each token isolated.
    nb.run_and_wait(2)
    snapshot = nb.cell(2).locator(".llm-magic-tokens")
    snapshot.wait_for()
    boxes = snapshot.locator("div > span").evaluate_all(BOXES)
    assert len(boxes) == 11 and out_of_order(boxes) == [], boxes
    assert {b["bidi"] for b in boxes} == {"isolate"}
    assert "\u202e" not in snapshot.inner_text()
    nb.screenshot("tokens-right-to-left")
    assert page_errors(nb) == [], nb.errors


# Whether the view fits its output area: nothing wider than the area, nothing scrolled sideways.
FITS = """root => {
  const area = root.closest('.jp-OutputArea-output') || root.parentElement;
  const a = area.getBoundingClientRect();
  const parts = Array.from(root.querySelectorAll('.llm-tokens-text, .llm-tokens-panel, '
                                                 + '.llm-tokens-head, .llm-tokens-legend'));
  return {root: [root.scrollWidth, root.clientWidth],
          outside: parts.filter(p => p.getBoundingClientRect().right > a.right + 1)
                        .map(p => p.className),
          panel: root.querySelector('.llm-tokens-panel').getBoundingClientRect().width,
          text: root.querySelector('.llm-tokens-text').getBoundingClientRect().width};
}"""


@pytest.mark.parametrize("app", ["lab", "notebook"])
def test_the_view_and_its_snapshot_fit_1280_and_900_pixels(open_notebook, app):
    nb = open_notebook([
        "import llm_magic as lm\nfrom IPython.display import HTML\n"
        "from llm_magic.analysis.tokens import view\nlm.load('demo');",
        "g = lm.generate('The import statement', model='demo', max_new_tokens=60, logprobs=5)\n"
        "v = view(g)\nv",
        "HTML(v.html())",
    ], app=app)
    nb.run_and_wait(0, timeout=180)
    nb.run_and_wait(1)
    nb.run_and_wait(2)
    root = nb.cell(1).locator(VIEW)
    spans = root.locator(".llm-tokens-text .llm-tokens-token")
    spans.first.wait_for()
    snapshot = nb.cell(2).locator(".llm-magic-tokens")
    snapshot.wait_for()
    for width in (1280, 900):
        nb.page.set_viewport_size({"width": width, "height": 900})
        spans.nth(4).click()
        nb.page.wait_for_function(PANEL_AT, arg=[root.element_handle(), 4, True])
        fit = root.evaluate(FITS)
        assert fit["root"][0] <= fit["root"][1] + 1 and fit["outside"] == [], fit
        assert fit["panel"] >= 240 and fit["text"] >= 240, fit
        assert snapshot.evaluate("s => s.scrollWidth <= s.clientWidth + 1")
        assert snapshot.evaluate("s => getComputedStyle(s).textAlign") == "left"
        nb.artifacts.mkdir(parents=True, exist_ok=True)
        nb.cell(1).screenshot(path=str(nb.artifacts / f"tokens_{app}_{width}.png"))
        nb.cell(2).screenshot(path=str(nb.artifacts / f"tokens_snapshot_{app}_{width}.png"))
    assert page_errors(nb) == [], nb.errors
