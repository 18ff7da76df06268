"""Panels that answer while a cell runs, in a real browser.

On the shared helper (``_browser.py``), in JupyterLab, in Notebook 7, and in
JupyterLab with ``commsOverSubshells`` set to ``disabled`` in its settings
file. While a ``%%llm`` cell generates, the playground generates on another
model and stops, Pin toggles, Unload of the generating model refuses in one
line, and Unload of the other model shows within 2 s, while the cell is still
``[*]`` and the page still shows the kernel busy (read in the same
``page.evaluate``). "Done" is judged by the cell's prompt, never by the kernel
status. Without subshells (turned off in the kernel) clicks act after the cell
and the panel says so in one line.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _browser import _PANEL_JS, Notebook, start_server, streamed_lengths

# Latencies measured in the page: make test runs this module alone, after the parallel run.
pytestmark = pytest.mark.serial

TOKENS = 8000  # the cell's generation: long enough for every click, under load too
ACT_WITHIN_MS = 2000  # how soon a click during a busy cell must show in the page
IDLE_BLIP_MS = 1000  # the longest "idle" a click may show while the cell runs (about 20 ms here)

# The page's view of a run: the cell's prompt, the execution indicator, the kernel's status.
_STATE_JS = f"""([cells, index, path]) => {{
  const cell = document.querySelectorAll(cells)[index];
  const prompt = cell && cell.querySelector('.jp-InputPrompt');
  const indicator = document.querySelector('.jp-Notebook-ExecutionIndicator');
  const panel = ({_PANEL_JS})(path);
  const kernel = panel && panel.sessionContext.session && panel.sessionContext.session.kernel;
  const bar = [...document.querySelectorAll('.jp-StatusBar-TextItem')]
    .find((e) => e.innerText.includes(' | '));  // "Python 3 (ipykernel) | Busy"
  return {{
    prompt: prompt ? prompt.innerText.trim() : null,
    indicator: indicator ? indicator.dataset.status : null,
    kernel: kernel ? kernel.status : null,
    statusBar: bar ? bar.innerText : null,
    comms: kernel ? String(kernel.commsOverSubshells) : null,
    now: performance.now(),
  }};
}}"""

# Resolves once `gone` (a selector) matches nothing, with the page's state at that moment.
_GONE_JS = f"""([gone, cells, index, path]) => {{
  if (document.querySelector(gone)) return null;
  return ({_STATE_JS})([cells, index, path]);
}}"""


@pytest.fixture(scope="module")
def long_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small GPT-2 with a long context, so the cell's generation lasts for every click."""
    from _models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("subshells-lab-model"), arch="gpt2",
                            context=8192, seed=0, n_embd=64)


@pytest.fixture(scope="module")
def other_model(long_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same weights in another folder: a second model, not the resident one again."""
    other = tmp_path_factory.mktemp("subshells-lab-other") / "other"
    shutil.copytree(long_model, other)
    return other


@pytest.fixture(scope="module")
def disabled_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """JupyterLab whose settings file turns ``commsOverSubshells`` off."""
    home = tmp_path_factory.mktemp("jupyter-comms-disabled")
    settings = home / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "kernels-settings.jupyterlab-settings").write_text(
        json.dumps({"commsOverSubshells": "disabled"}))
    with start_server(home) as server:
        yield server


def _state(nb: Notebook, cell: int) -> dict[str, Any]:
    """The page's state; a click's idle blip (bounded by ``IDLE_BLIP_MS``) is waited out."""
    state = nb.page.evaluate(_STATE_JS, [nb.cells_selector, cell, nb.name])
    deadline = time.monotonic() + IDLE_BLIP_MS / 1000
    while ("Idle" in (state["statusBar"] or "") or state["indicator"] == "idle") and (
            time.monotonic() < deadline):
        nb.page.wait_for_timeout(50)
        state = nb.page.evaluate(_STATE_JS, [nb.cells_selector, cell, nb.name])
    return state  # type: ignore[no-any-return]


def _assert_busy(state: dict[str, Any], app: str, what: str) -> None:
    """The cell is still running, and the page shows the kernel busy.

    What the page shows: the execution indicator and, in JupyterLab, the status
    bar. The kernel object's own status blips to idle for a few milliseconds
    after each click (the click's idle, then the cell's busy again); that is
    measured by :func:`_longest_idle_ms`.
    """
    assert state["prompt"] == "[*]:", f"the cell was no longer running when {what}: {state}"
    assert state["indicator"] == "busy", (what, state)
    if app == "lab":
        assert state["statusBar"].endswith("| Busy"), (what, state)


def _click_and_wait_gone(nb: Notebook, button: Any, gone: str, cell: int) -> tuple[float, Any]:
    """Click, then wait until ``gone`` matches nothing: the latency in ms and the page's state.

    The latency runs from the click event itself (Playwright's own checks before
    it clicks do not count) to the first frame without ``gone``.
    """
    button.evaluate("b => b.addEventListener('click', () => { window.__clickedAt = "
                    "performance.now(); }, {capture: true, once: true})")
    button.click()
    handle = nb.page.wait_for_function(_GONE_JS, arg=[gone, nb.cells_selector, cell, nb.name],
                                       timeout=30_000)
    state = handle.json_value()
    return state["now"] - nb.page.evaluate("window.__clickedAt"), state


def _watch_status(nb: Notebook) -> None:
    """Record every change of the page's kernel status, with its time."""
    nb.page.evaluate(f"""path => {{
      const kernel = ({_PANEL_JS})(path).sessionContext.session.kernel;
      window.__statuses = [];
      kernel.statusChanged.connect((_, s) => window.__statuses.push([performance.now(), s]));
    }}""", nb.name)


def _longest_idle_ms(nb: Notebook, start: float, end: float) -> float:
    """The longest the page showed the kernel idle between ``start`` and ``end`` (page ms)."""
    changes = nb.page.evaluate("window.__statuses")
    longest, idle_since = 0.0, None
    for t, status in changes:
        if start <= t <= end and status == "idle" and idle_since is None:
            idle_since = t
        elif status != "idle" and idle_since is not None:
            longest, idle_since = max(longest, t - idle_since), None
    if idle_since is not None:
        longest = max(longest, end - idle_since)
    return float(longest)


VARIANTS = [
    pytest.param("lab", False, id="lab"),
    pytest.param("notebook", False, id="notebook7"),
    pytest.param("lab", True, id="lab-comms-over-subshells-disabled"),
]


@pytest.mark.parametrize(("app", "disabled"), VARIANTS)
def test_panel_and_playground_answer_while_a_cell_generates(
        app, disabled, request, open_notebook, long_model, other_model):
    server = (request.getfixturevalue("disabled_server") if disabled
              else request.getfixturevalue("lab_server"))
    nb = open_notebook([
        f"%load_ext llm_magic\n%llm load {long_model} --as long\n"
        f"%llm load {other_model} --as other",
        "import threading, time\nimport llm_magic as lm\nevents = []\n"
        "lm.get_manager().events.subscribe(lambda e: events.append((e.kind, e.model, "
        "time.monotonic())), kinds=('unloaded', 'generation_end'))\n"
        "p = lm.panel()\np.playground.model.value = 'other'\n"
        "p.playground.max_new_tokens.value = 6000\np",
        f"%%llm long -n {TOKENS} --no-chat\nHello",
        "ends = [t for k, m, t in events if k == 'generation_end' and m == 'long']\n"
        "gone = [t for k, m, t in events if k == 'unloaded' and m == 'other']\n"
        "subshells = [t for t in threading.enumerate() if t.name.startswith('subshell-')]\n"
        "print(bool(ends and gone and gone[0] < ends[-1]), _llm.stats.stop_reason, "
        "_llm.stats.new_tokens, len(subshells))",
    ], app=app, server=server)
    nb.run_and_wait(0, timeout=240)
    nb.run_and_wait(1)
    panel = nb.cell(1)
    table = panel.locator(".llm-magic-models")
    table.locator("tr[data-model='other']").wait_for()
    assert table.locator("[data-field='wait-note']").is_hidden()
    if disabled:
        assert _state(nb, 1)["comms"] == "disabled"
    _watch_status(nb)

    nb.run(2)
    began = _state(nb, 2)["now"]
    output = nb.cell(2).locator(".jp-OutputArea-output")
    output.first.wait_for()
    nb.page.wait_for_function(
        "([cells, i]) => { const o = document.querySelectorAll(cells)[i]"
        ".querySelector('.jp-OutputArea-output'); return o && o.innerText.length > 20; }",
        arg=[nb.cells_selector, 2])
    _assert_busy(_state(nb, 2), app, "the cell started streaming")

    # The playground generates on the other model, streams, and stops.
    playground = panel.locator(".llm-magic-playground")
    playground.locator("textarea").fill("Hello")
    playground.locator("button", has_text="Generate").click()
    text = playground.locator(".llm-magic-stream [data-field='text']")
    lengths = streamed_lengths(nb.page, text)
    assert len(set(lengths)) >= 3 and lengths == sorted(lengths), f"no streaming: {lengths}"
    assert playground.locator("[data-field='prompt']").inner_text() == "Hello"
    _assert_busy(_state(nb, 2), app, "the playground streamed")
    playground.locator("button", has_text="Stop").click()
    playground.locator("[data-field='state']").filter(has_text="stopped").wait_for(
        timeout=ACT_WITHIN_MS * 5)
    _assert_busy(_state(nb, 2), app, "the playground stopped")

    # Pin toggles; Unload of the generating model refuses in one line.
    long_row = table.locator("tr[data-model='long']")
    long_row.locator("button[data-action='pin']").click()
    long_row.locator("[data-field='name']").filter(has_text="long (pinned)").wait_for(
        timeout=ACT_WITHIN_MS * 5)
    _assert_busy(_state(nb, 2), app, "Pin acted")
    long_row.locator("button[data-action='unload']").click()
    table.locator(".lm-error").filter(has_text="Model 'long' is generating.").wait_for(
        timeout=ACT_WITHIN_MS * 5)
    assert table.locator(".lm-error").inner_text() == (
        "Model 'long' is generating. Stop that generation first, then unload.")
    _assert_busy(_state(nb, 2), app, "Unload was refused")

    # Unload of the other model shows within 2 s, the cell still running.
    other = table.locator("tr[data-model='other'] button[data-action='unload']")
    latency, state = _click_and_wait_gone(nb, other, ".llm-magic-models tr[data-model='other']", 2)
    _assert_busy(state, app, "the unload showed")
    assert latency < ACT_WITHIN_MS, f"the unload showed {latency:.0f} ms after the click"
    table.locator(".lm-notice").filter(has_text="Unloaded 'other'").wait_for()
    table.scroll_into_view_if_needed()
    nb.screenshot("acted-while-busy")
    idle_ms = _longest_idle_ms(nb, began, _state(nb, 2)["now"])
    print(f"{request.node.callspec.id}: unload showed {latency:.0f} ms after the click; "
          f"longest idle shown during the cell {idle_ms:.0f} ms")
    # Each click's idle is followed at once by the cell's busy again: a blip, never a stay.
    assert idle_ms < IDLE_BLIP_MS, f"the page showed the busy kernel idle for {idle_ms:.0f} ms"

    if app == "lab" and not disabled:  # the cell goes on to its end
        nb.wait_done(2, timeout=600)
        reason_expected = "length"
    else:  # the interrupt stops it, with the clicks it had
        nb.page.locator("jp-button[data-command='notebook:interrupt-kernel']").click()
        nb.wait_done(2, timeout=60)
        reason_expected = "interrupted"
    before_end, reason, count, subshells = nb.run_and_wait(3)[0].split()
    assert before_end == "True", "the unload did not happen before the generation ended"
    assert reason == reason_expected, reason
    assert (int(count) == TOKENS) == (reason == "length")
    assert int(subshells) == (1 if disabled else 2)  # llm_magic's own; the page's when it uses one
    assert nb.outside_requests() == []


def test_without_subshells_clicks_act_after_the_cell_and_the_panel_says_so(open_notebook):
    nb = open_notebook([
        "import os\nos.environ['LLM_MAGIC_SUBSHELL'] = 'off'\n"
        "import llm_magic as lm\nlm.load('demo')\nlm.panel()",
        "import time\ntime.sleep(8)",
    ])
    nb.run_and_wait(0, timeout=240)
    table = nb.cell(0).locator(".llm-magic-models")
    note = table.locator("[data-field='wait-note']")
    note.wait_for()
    assert note.inner_text() == ("Clicks here wait for the running cell: widget subshells are "
                                 "turned off (LLM_MAGIC_SUBSHELL=off).")
    assert nb.cell(0).locator(".llm-magic-wait-note").is_hidden()  # said once, in the models
    nb.run(1)
    name = table.locator("tr[data-model='demo'] [data-field='name']")
    table.locator("tr[data-model='demo'] button[data-action='pin']").click()
    seen_running = 0
    while nb.prompt(1) == "[*]:":
        state = nb.page.evaluate(
            "([cells, i]) => [document.querySelectorAll(cells)[i].querySelector('.jp-InputPrompt')"
            ".innerText.trim(), document.querySelector(\".llm-magic-models tr[data-model='demo'] "
            "[data-field='name']\").innerText]", [nb.cells_selector, 1])
        if state[0] == "[*]:":
            seen_running += 1
            assert state[1] == "demo", "the click acted while the cell ran"
        nb.page.wait_for_timeout(300)
    assert seen_running >= 3
    nb.wait_done(1)
    name.filter(has_text="demo (pinned)").wait_for(timeout=10_000)
    nb.screenshot("clicks-wait")
    assert nb.outside_requests() == []


def test_stop_in_the_models_table_stops_a_running_cell_and_keeps_its_text(open_notebook,
                                                                         long_model):
    """The Stop that "Model 'long' is generating. Stop that generation first" points at.

    Clicked while a ``%%llm`` cell generates, it stops that generation within a
    fraction of a second: the cell ends (no traceback) and shows the text it made
    so far, which ``_llm`` keeps.
    """
    nb = open_notebook([
        f"%load_ext llm_magic\n%llm load {long_model} --as long",
        "import llm_magic as lm\nlm.panel()",
        f"%%llm long -n {TOKENS} --no-chat\nHello",
        "print(_llm.stats.stop_reason, _llm.stats.new_tokens, len(_llm.text))",
    ])
    nb.run_and_wait(0, timeout=240)
    nb.run_and_wait(1)
    table = nb.cell(1).locator(".llm-magic-models")
    row = table.locator("tr[data-model='long']")
    row.wait_for()
    assert row.locator("button[data-action='stop']").count() == 0  # only while it generates
    nb.run(2)
    nb.page.wait_for_function(
        "([cells, i]) => { const o = document.querySelectorAll(cells)[i]"
        ".querySelector('.jp-OutputArea-output'); return o && o.innerText.length > 20; }",
        arg=[nb.cells_selector, 2])
    _assert_busy(_state(nb, 2), "lab", "the cell started streaming")
    assert row.locator("[data-field='last_used']").inner_text() == "generating"
    stop = row.locator("button[data-action='stop']")
    table.scroll_into_view_if_needed()
    nb.screenshot("stop-in-the-table")
    stop.evaluate("b => b.addEventListener('click', () => { window.__clickedAt = "
                  "performance.now(); }, {capture: true, once: true})")
    stop.click()
    nb.wait_done(2, timeout=60)
    ended = nb.page.evaluate("performance.now()") - nb.page.evaluate("window.__clickedAt")
    print(f"the cell ended {ended:.0f} ms after the click on Stop")
    assert ended < 2 * ACT_WITHIN_MS, f"the cell ended {ended:.0f} ms after the click"
    outputs = nb.outputs(2)
    assert len(outputs) == 1 and "Traceback" not in outputs[0] and "KeyboardInterrupt" not in (
        outputs[0]), outputs
    shown = nb.cell(2).locator(".jp-OutputArea-output pre.llm-magic-output").inner_text()
    footer = nb.cell(2).locator(".jp-OutputArea-output small").inner_text()
    assert footer.startswith("long: ") and footer.endswith("(interrupted)"), footer
    table.locator(".lm-notice").filter(
        has_text="Stopped the generation on 'long'; its text so far is kept.").wait_for()
    row.locator("button[data-action='stop']").wait_for(state="detached", timeout=5000)
    reason, count, length = nb.run_and_wait(3)[0].split()
    assert reason == "interrupted" and 0 < int(count) < TOKENS
    assert int(length) == len(shown) > 20  # the cell shows all the text that _llm keeps
    nb.cell(2).scroll_into_view_if_needed()
    nb.screenshot("cell-stopped-from-the-table")
    assert nb.outside_requests() == []
