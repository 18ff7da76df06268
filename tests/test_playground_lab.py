"""The playground's conversation in a real JupyterLab and Notebook 7, driven in Chromium.

Through the shared helper (``_browser.py``): turns are sent from the page, a
cell takes a turn in the same conversation, Stop keeps a partial reply as an
interrupted turn, a turn that would interleave is refused in the widget's own
line, and the models table shows the kept cache beside the memory. The view
must fit the output area at 1280 and 900 px; screenshots go to the test's
artifact folder and to ``$LLM_MAGIC_SHOTS`` (default ``/tmp/shots``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

SHOTS = Path(os.environ.get("LLM_MAGIC_SHOTS", "/tmp/shots"))
PLAYGROUND = ".llm-magic-playground"


@pytest.fixture(scope="module")
def long_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small GPT-2 with a long context, so a turn lasts as long as the test needs."""
    from _models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("playground-lab-model"), arch="gpt2",
                            context=8192, seed=0, n_embd=64)


def _field(root: Any, name: str) -> Any:
    return root.locator(f"[data-field='{name}']")


def _send(playground: Any, text: str, turns: int) -> None:
    """Type a message, press Send, and wait until the transcript holds ``turns`` replies."""
    playground.locator("textarea").fill(text)
    playground.locator("button", has_text="Send").click()
    _wait_replies(playground, turns)


def _wait_replies(playground: Any, turns: int) -> None:
    playground.page.wait_for_function(
        "([root, n]) => root.querySelectorAll(\".lm-turn[data-role='assistant'] "
        "[data-field='chat-footer']\").length === n",
        arg=[playground.element_handle(), turns])


def _fits(nb: Any, playground: Any) -> None:
    """Nothing of the playground runs past the output area, at this width."""
    widths = playground.evaluate("""e => {
      const area = e.closest('.jp-OutputArea-output') || e.parentElement;
      const log = e.querySelector('.lm-chat-log');
      return {area: area.clientWidth, areaScroll: area.scrollWidth, own: e.scrollWidth,
              right: e.getBoundingClientRect().right, areaRight: area.getBoundingClientRect().right,
              log: log ? log.scrollWidth - log.clientWidth : 0};
    }""")
    assert widths["areaScroll"] <= widths["area"] + 1, widths
    assert widths["right"] <= widths["areaRight"] + 1 and widths["log"] <= 1, widths


def _shoot(nb: Any, playground: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    playground.evaluate("e => e.scrollIntoView({block: 'start'})")
    nb.page.screenshot(path=str(SHOTS / f"{name}.png"))
    nb.screenshot(name)


@pytest.mark.parametrize("app", ["lab", "notebook"])
def test_three_turns_from_the_page_and_a_cell_in_one_conversation(open_notebook, app):
    nb = open_notebook([
        "%load_ext llm_magic\nimport llm_magic as lm\nlm.load('demo');",
        "p = lm.panel()\npg = p.playground\npg.max_new_tokens.value = 20\n"
        "pg.conversation.value = True\np",
        "%%llm -c -n 20\nAnd a dict?",
        "c = pg.conv\nprint(c.name, len(c.turns), [m['role'] for m in c.messages])",
    ], app=app)
    nb.run_and_wait(0, timeout=180)
    nb.run_and_wait(1)
    playground = nb.cell(1).locator(PLAYGROUND)
    name = _field(playground, "chat-name")
    name.filter(has_text=re.compile(r"^chat-\d+$")).wait_for()
    assert playground.locator("button", has_text="Generate").count() == 0
    assert _field(playground, "chat-log").inner_text().strip().startswith("No turns yet")
    _send(playground, "What is a list?", 1)
    _send(playground, "def add(a, b):", 2)
    nb.run_and_wait(2)  # a cell's turn in the widget's conversation (it is the current one)
    _wait_replies(playground, 3)  # the cell's turn shows in the widget
    conv, turns, roles = nb.run_and_wait(3)[0].split(" ", 2)
    assert conv == name.inner_text() and turns == "3"
    assert roles.count("'user'") == 3 and roles.count("'assistant'") == 3
    texts = [t.inner_text() for t in _field(playground, "chat-turn-text").all()]
    assert texts[0::2] == ["What is a list?", "def add(a, b):", "And a dict?"]
    footers = [f.inner_text() for f in _field(playground, "chat-footer").all()]
    assert re.match(r"\d+ new tokens; reused 0 of", footers[0]), footers
    assert all(re.search(r"new tokens; reused [\d,]+ of [\d,]+ prompt tokens", f)
               for f in footers)
    assert re.search(r"reused [1-9][\d,]* of", footers[1]), footers  # the kept cache
    about = _field(playground, "chat-about").inner_text()
    assert about.startswith("with 'demo' · 3 turns · cache ") and about.endswith("B")
    # The shaded turns take their ink from inkOn: black on these light shades.
    ink = playground.locator(".lm-turn").first.evaluate("e => getComputedStyle(e).color")
    assert ink == "rgb(0, 0, 0)"
    cache = nb.cell(1).locator("tr[data-model='demo'] [data-field='cache']")
    cache.filter(has_text=re.compile(r"^ \+ [\d.]+ [KMG]?B cache$")).wait_for(timeout=10_000)
    assert nb.cell(1).locator("tr[data-model='demo'] [data-field='memory']").inner_text(
    ).endswith(" cache")
    where = "lab" if app == "lab" else "notebook7"
    for width in (1280, 900):
        nb.page.set_viewport_size({"width": width, "height": 900})
        nb.page.wait_for_timeout(400)
        _fits(nb, playground)
        _shoot(nb, playground, f"playground-conversation-{where}-{width}")
    assert nb.outside_requests() == []


def test_stop_keeps_an_interrupted_turn_and_nothing_interleaves(open_notebook, long_model):
    nb = open_notebook([
        f"%load_ext llm_magic\nimport llm_magic as lm\nlm.load({str(long_model)!r}, "
        "name='long');",
        "from llm_magic.widgets.playground import Playground\npg = Playground()\n"
        "pg.max_new_tokens.value = 3000\npg.conversation.value = True\npg",
        "%%llm -c -n 5\nA cell's turn",
        "c = pg.conv\nprint(len(c.turns), c.messages[-1].get('interrupted'))",
        "g = c.say('A long one from a cell', max_new_tokens=3000)",
        "print(2 + 2)",
    ])
    nb.run_and_wait(0, timeout=180)
    nb.run_and_wait(1)
    playground = nb.cell(1).locator(PLAYGROUND)
    _field(playground, "chat-name").filter(has_text="chat-").wait_for()
    playground.locator("textarea").fill("Hello")
    playground.locator("button", has_text="Send").click()
    reply = _field(playground, "chat-pending-text")
    nb.page.wait_for_function("e => e.textContent.length > 30", arg=reply.element_handle())
    # A cell's turn on the same conversation is refused while the widget's runs.
    nb.run(2)
    nb.wait_done(2)
    assert "answering another turn" in "\n".join(nb.outputs(2))
    assert _field(playground, "chat-state").inner_text() == "answering…"
    playground.locator("button", has_text="Stop").click()
    _field(playground, "chat-state").filter(has_text="stopped").wait_for(timeout=10_000)
    mark = _field(playground, "chat-interrupted")
    assert mark.count() == 1 and mark.inner_text() == "interrupted"
    assert mark.evaluate("e => getComputedStyle(e).color") == "rgb(0, 0, 0)"  # inkOn on orange
    kept = _field(playground, "chat-turn-text").nth(1).inner_text()
    assert len(kept) > 30
    assert nb.run_and_wait(3)[0].split() == ["1", "True"]
    assert [out.strip() for out in nb.run_and_wait(5)] == ["4"]  # the kernel is free
    # Now a cell's turn runs, and the widget's Send is refused in its own line.
    nb.run(4)
    _field(playground, "chat-state").filter(has_text="another turn").wait_for(timeout=30_000)
    playground.locator("textarea").fill("Mine")
    playground.locator("button", has_text="Send").click()
    error = _field(playground, "chat-error")
    error.filter(has_text="is answering another turn (a cell's)").wait_for(timeout=10_000)
    assert playground.locator("textarea").input_value() == "Mine"
    playground.scroll_into_view_if_needed()
    nb.screenshot("refused-while-a-cell-answers")
    nb.page.locator("jp-button[data-command='notebook:interrupt-kernel']").click()
    nb.wait_done(4)
    _wait_replies(playground, 2)  # the cell's interrupted turn shows in the widget
    assert _field(playground, "chat-interrupted").count() == 2
    for width in (1280, 900):
        nb.page.set_viewport_size({"width": width, "height": 900})
        nb.page.wait_for_timeout(400)
        _fits(nb, playground)
    _shoot(nb, playground, "playground-interrupted-lab-900")
    assert nb.outside_requests() == []
