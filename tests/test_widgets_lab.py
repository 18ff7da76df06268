"""The widget panels in a real JupyterLab (and Notebook 7), driven in Chromium.

On the shared helper (``_browser.py``): the notebook runs as a user runs it, and
every assertion reads the rendered page. Each test saves a screenshot of the
view it checks in its artifact folder, and checks that the page asked nothing
of any host but loopback.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from _browser import streamed_lengths

XSS = "<img src=x onerror=\"window.__xss='img'\"><script>window.__xss='script'</script>"
MONITOR = ".llm-magic-monitor"


@pytest.fixture(scope="module")
def long_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small GPT-2 with a long context, so a generation lasts as long as a test needs."""
    from _models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("widgets-lab-model"), arch="gpt2",
                            context=8192, seed=0, n_embd=64)


def _field(root: Any, name: str) -> str:
    return str(root.locator(f"[data-field='{name}']").first.inner_text()).strip()


def _monitor_state(nb: Any, cell: int) -> tuple[str, ...]:
    view = nb.cell(cell).locator(MONITOR)
    return tuple(_field(view, f) for f in ("cpu", "ram", "rss", "process-cpu"))


def _no_xss(nb: Any) -> None:
    assert nb.page.evaluate("window.__xss") is None, "a script from the data ran"
    assert nb.page.locator("img[src='x']").count() == 0
    assert nb.page.locator("script:has-text('window.__xss')").count() == 0


def test_monitor_renders_and_moves_while_another_cell_generates(open_notebook, long_model):
    nb = open_notebook([
        f"%load_ext llm_magic\n%llm load {long_model} --as long",
        "%llm monitor",
        "%%llm long -n 6000 --no-chat\nHello",
    ])
    nb.run_and_wait(0, timeout=180)
    nb.run_and_wait(1)
    view = nb.cell(1).locator(MONITOR)
    view.locator("[data-field='cpu']").filter(has_text="%").wait_for()
    first = _monitor_state(nb, 1)
    assert first[0].endswith(" %") and " / " in first[1] and first[2].endswith("B")
    gpus = view.locator(".lm-gpu").count()
    note = _field(view, "gpu-note")
    assert gpus > 0 or note == "CPU only", (gpus, note)
    assert _field(view, "state") == "live"
    assert view.locator("canvas").count() >= 1
    nb.run(2)  # busy from here on
    seen = {first}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(seen) < 3:
        nb.page.wait_for_timeout(700)
        assert nb.prompt(2) == "[*]:", "the generation ended before the gauges were read"
        seen.add(_monitor_state(nb, 1))
    assert len(seen) >= 3, f"the gauges did not move while the kernel was busy: {seen}"
    view.scroll_into_view_if_needed()
    nb.screenshot("monitor")
    nb.page.locator("jp-button[data-command='notebook:interrupt-kernel']").click()
    nb.wait_done(2)
    view.locator(".lm-close").click()
    view.locator("[data-field='state']").filter(has_text="stopped").wait_for()
    stopped = _monitor_state(nb, 1)
    nb.page.wait_for_timeout(2500)
    assert _monitor_state(nb, 1) == stopped
    assert nb.outside_requests() == []


def test_panel_follows_cells_and_unload_removes_the_model(open_notebook, long_model):
    nb = open_notebook([
        "%load_ext llm_magic\n%llm load demo",
        "%llm panel",
        f"%llm load {long_model} --as second",
        "import llm_magic as lm\nprint(sorted(m.name for m in lm.models()))",
    ])
    nb.run_and_wait(0, timeout=180)
    nb.run_and_wait(1)
    table = nb.cell(1).locator(".llm-magic-models")
    demo = table.locator("tr[data-model='demo']")
    demo.wait_for()
    assert demo.locator("[data-field='source']").inner_text() == "demo"
    assert demo.locator("[data-field='device']").inner_text() == "cpu"
    assert demo.locator("[data-field='memory']").inner_text().endswith("MB")
    nb.run_and_wait(2, timeout=180)
    second = table.locator("tr[data-model='second']")
    second.wait_for(timeout=5000)  # no refresh: the manager's event brought it
    assert second.locator("[data-field='source']").inner_text() == str(long_model)
    table.scroll_into_view_if_needed()
    nb.screenshot("panel")
    second.locator("button[data-action='unload']").click()
    second.wait_for(state="detached", timeout=10_000)
    table.locator(".lm-notice").filter(has_text="Unloaded 'second'").wait_for()
    assert [out.strip() for out in nb.run_and_wait(3)] == ["['demo']"]  # lm.models() agrees
    pin = demo.locator("button[data-action='pin']")
    pin.evaluate("b => { b.llmMagicMark = 'kept'; }")
    pin.click()
    name = table.locator("tr[data-model='demo'] [data-field='name']")
    name.filter(has_text="demo (pinned)").wait_for()
    # The row was updated in place: the same button, so no redraw can swallow a click.
    assert pin.evaluate("b => b.llmMagicMark") == "kept" and pin.inner_text() == "Unpin"
    pin.click()  # it reads the state it shows now: it unpins
    name.filter(has_text=re.compile(r"^demo$")).wait_for()
    assert pin.evaluate("b => b.llmMagicMark") == "kept" and pin.inner_text() == "Pin"
    assert nb.outside_requests() == []


def test_playground_streams_stops_and_other_cells_run(open_notebook, long_model):
    nb = open_notebook([
        f"%load_ext llm_magic\n%llm load {long_model} --as long",
        "import llm_magic as lm\np = lm.panel()\np.playground.max_new_tokens.value = 6000\np",
        "print(2 + 2)",
        "g = lm.last()\nprint(g.stats.stop_reason, g.stats.new_tokens, len(g.text))",
    ])
    nb.run_and_wait(0, timeout=180)
    nb.run_and_wait(1)
    playground = nb.cell(1).locator(".llm-magic-playground")
    playground.locator("textarea").fill("Hello")
    playground.locator("button", has_text="Generate").click()
    text = playground.locator(".llm-magic-stream [data-field='text']")
    lengths = streamed_lengths(nb.page, text, every_ms=300)
    assert len(set(lengths)) >= 3 and lengths == sorted(lengths), f"no streaming: {lengths}"
    assert [out.strip() for out in nb.run_and_wait(2)] == ["4"]  # the kernel is not blocked
    assert _field(playground, "state") == "generating…"
    playground.scroll_into_view_if_needed()
    nb.screenshot("playground-streaming")
    playground.locator("button", has_text="Stop").click()
    playground.locator("[data-field='state']").filter(has_text="stopped").wait_for(timeout=10_000)
    kept = text.inner_text()
    assert len(kept) > 50
    assert "interrupted" in _field(playground, "stats")
    nb.page.wait_for_timeout(1000)
    assert text.inner_text() == kept
    reason, count, length = nb.run_and_wait(3)[0].split()
    assert reason == "interrupted" and 0 < int(count) < 6000 and int(length) == len(kept)
    nb.screenshot("playground-stopped")
    assert nb.outside_requests() == []


def test_markup_in_prompts_and_sources_renders_as_text(open_notebook, long_model, tmp_path):
    import shutil

    odd = tmp_path / XSS.replace("/", "")
    shutil.copytree(long_model, odd)
    nb = open_notebook([
        f"%load_ext llm_magic\nimport llm_magic as lm\nlm.load({str(odd)!r}, name='odd')",
        "p = lm.panel()\np.playground.max_new_tokens.value = 12\np",
    ])
    nb.run_and_wait(0, timeout=180)
    nb.run_and_wait(1)
    panel = nb.cell(1)
    source = panel.locator("tr[data-model='odd'] [data-field='source']")
    assert source.inner_text() == str(odd)
    playground = panel.locator(".llm-magic-playground")
    playground.locator("textarea").fill(XSS)
    playground.locator("button", has_text="Generate").click()
    playground.locator("[data-field='stats']").filter(has_text="new tokens").wait_for()
    assert playground.locator("[data-field='prompt']").inner_text() == XSS
    nb.page.wait_for_timeout(500)
    _no_xss(nb)
    playground.scroll_into_view_if_needed()
    nb.screenshot("markup-as-text")
    assert nb.outside_requests() == []


def test_gpu_figures_render_with_na_for_unsupported_fields(open_notebook):
    """No machine here has an NVIDIA GPU: the kernel gets the unit tests' fake NVML."""
    nb = open_notebook([
        "import sys\nfrom test_monitor import FakeGPU, FakeNVML\n"
        "sys.modules['pynvml'] = FakeNVML([FakeGPU('GPU-aaaa', name='NVIDIA Fake 80GB', "
        "not_supported={'power'})])\n"
        "import llm_magic as lm\nfrom llm_magic.resources.sampler import Sampler\n"
        "lm.monitor(sampler=Sampler())",
    ])
    nb.run_and_wait(0)
    gpu = nb.cell(0).locator(f"{MONITOR} .lm-gpu")
    gpu.locator("[data-field='gpu-util']").filter(has_text="%").wait_for()
    assert _field(gpu, "gpu-label") == "cuda:0 NVIDIA Fake 80GB"
    assert _field(gpu, "gpu-util") == "42 %"
    assert _field(gpu, "gpu-memory") == "10.7 GB / 85.9 GB"
    assert _field(gpu, "gpu-temperature") == "55 °C"
    assert _field(gpu, "gpu-power") == "n/a"
    assert nb.cell(0).locator(f"{MONITOR} [data-field='gpu-note']").is_hidden()
    width = gpu.locator("[data-field='gpu-util']").locator("xpath=..").locator(
        ".lm-fill").first.evaluate("e => e.style.width")
    assert width == "42%"  # the bar is as long as the figure says
    gpu.scroll_into_view_if_needed()
    nb.screenshot("monitor-gpu")
    assert nb.outside_requests() == []


def test_the_monitor_renders_in_notebook_7(open_notebook):
    nb = open_notebook(["import llm_magic as lm\nlm.monitor()"], app="notebook")
    nb.run_and_wait(0)
    view = nb.cell(0).locator(MONITOR)
    view.locator("[data-field='cpu']").filter(has_text="%").wait_for()
    first = _monitor_state(nb, 0)
    assert " / " in first[1]
    assert view.locator(".lm-gpu").count() > 0 or _field(view, "gpu-note") == "CPU only"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _monitor_state(nb, 0) == first:
        nb.page.wait_for_timeout(300)
    assert _monitor_state(nb, 0) != first, "the gauges did not update in Notebook 7"
    nb.screenshot("monitor-notebook7")
    assert nb.outside_requests() == []


# The computed look of an element: what a user sees of it, as the page styles it.
_LOOK_JS = """e => { const s = getComputedStyle(e); return {background: s.backgroundColor,
  color: s.color, border: s.borderTopStyle, cursor: s.cursor, opacity: s.opacity,
  fontSize: s.fontSize}; }"""


def test_disabled_buttons_look_disabled(open_notebook, long_model):
    nb = open_notebook([
        f"%load_ext llm_magic\n%llm load {long_model} --as long",
        "import llm_magic as lm\np = lm.panel()\np.playground.max_new_tokens.value = 6000\np",
        "m = lm.monitor()\nm",
        "m.stop()",
    ])
    nb.run_and_wait(0, timeout=180)
    nb.run_and_wait(1)
    playground = nb.cell(1).locator(".llm-magic-playground")
    generate = playground.locator("button", has_text="Generate")
    stop = playground.locator("button", has_text="Stop")
    assert stop.is_disabled() and generate.is_enabled()
    idle_stop, idle_generate = stop.evaluate(_LOOK_JS), generate.evaluate(_LOOK_JS)
    playground.locator("textarea").fill("Hello")
    generate.click()
    playground.locator("[data-field='state']").filter(has_text="generating").wait_for()
    assert stop.is_enabled() and generate.is_disabled()
    busy_stop, busy_generate = stop.evaluate(_LOOK_JS), generate.evaluate(_LOOK_JS)
    playground.scroll_into_view_if_needed()
    nb.screenshot("playground-buttons-while-generating")
    stop.click()
    playground.locator("[data-field='state']").filter(has_text="stopped").wait_for()
    # Each button looks different disabled than enabled, and every disabled one alike: grey,
    # a dashed edge, no pointer (not the button's colour faded, which read as active).
    for disabled, enabled in ((idle_stop, busy_stop), (busy_generate, idle_generate)):
        assert disabled["background"] != enabled["background"], (disabled, enabled)
        assert (disabled["border"], disabled["cursor"]) == ("dashed", "not-allowed"), disabled
        assert enabled["border"] != "dashed" and enabled["cursor"] != "not-allowed", enabled
    assert idle_stop == busy_generate  # one disabled look, whatever the button's style
    nb.run_and_wait(2)
    close = nb.cell(2).locator(f"{MONITOR} .lm-close")
    live = close.evaluate(_LOOK_JS)
    nb.run_and_wait(3)
    nb.cell(2).locator(f"{MONITOR} [data-field='state']").filter(has_text="stopped").wait_for()
    assert close.is_disabled()
    stopped = close.evaluate(_LOOK_JS)
    assert (stopped["border"], stopped["cursor"]) == ("dashed", "not-allowed"), stopped
    assert stopped["background"] != live["background"]
    assert nb.outside_requests() == []


def test_monitor_first_line_is_neutral_and_the_sparkline_has_axes(open_notebook):
    nb = open_notebook(["import llm_magic as lm\nlm.monitor()"])
    nb.run_and_wait(0)
    view = nb.cell(0).locator(MONITOR)
    view.locator("[data-field='cpu']").filter(has_text="%").wait_for()
    if view.locator(".lm-gpu").count() == 0:  # a CPU machine: every machine here
        note = view.locator("[data-field='gpu-note']")
        reason = view.locator("[data-field='gpu-reason']")
        assert note.inner_text() == "CPU only"
        assert reason.inner_text().startswith("no NVIDIA GPU is visible: ")
        assert view.locator(".lm-note").get_attribute("title") == reason.inner_text()
        # The first line reads as a fact: the colour of the title, not a warning's or an
        # error's; the reason is smaller and grey.
        title = view.locator(".lm-title").evaluate(_LOOK_JS)
        look, why = note.evaluate(_LOOK_JS), reason.evaluate(_LOOK_JS)
        assert look["color"] == title["color"], (look, title)
        assert float(why["fontSize"][:-2]) < float(look["fontSize"][:-2])
        assert why["color"] != look["color"]
    spark = view.locator("[data-field='host-sparkline']")
    axes = view.locator(".lm-host .lm-spark-box")
    assert axes.locator(".lm-y-axis").inner_text().split() == ["100", "%", "50", "%", "0", "%"]
    assert axes.locator(".lm-x-axis").inner_text().split()[-1] == "now"
    # The RAM line's key has the colour of the RAM bar's used part.
    key = view.locator(".lm-host .lm-legend .lm-key", has_text="RAM").evaluate(
        "e => getComputedStyle(e).borderLeftColor")
    used = view.locator(".lm-host .lm-fill-other").first.evaluate(
        "e => getComputedStyle(e).backgroundColor")
    assert key == used, (key, used)
    nb.page.wait_for_timeout(14_000)
    since = view.locator("[data-field='host-sparkline-from']").inner_text()
    assert re.fullmatch(r"\d+ s ago", since) and 12 <= int(since.split()[0]) <= 30, since
    # The time axis is the samples so far: the lines start at its left end, not at 90 %.
    columns = spark.evaluate("""c => {
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      const drawn = new Set();
      for (let i = 0; i < d.length; i += 4) {
        if (d[i + 3] > 0 && Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1],
            d[i + 2]) > 60) drawn.add(((i / 4) % c.width) / c.width);
      }
      return [Math.min(...drawn), Math.max(...drawn)];
    }""")
    assert columns[0] < 0.05 and columns[1] > 0.95, columns
    view.scroll_into_view_if_needed()
    nb.screenshot("monitor-axes")
    assert nb.outside_requests() == []
