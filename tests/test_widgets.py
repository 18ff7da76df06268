"""The widget panels' state under ipywidgets' default (dummy) comm.

Real samplers, a real manager with tiny transformers models, real generations;
NVML is faked only for the branches no machine here has (unsupported fields,
a GPU name with markup). Front-end messages go through ipywidgets' own
``_handle_msg``, the path a click in the page takes.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import ipywidgets
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from test_monitor import FakeGPU, fake_nvml  # noqa: F401 - the fixture, shared

import llm_magic as lm
from llm_magic.errors import LLMMagicWarning
from llm_magic.manager.room import budget
from llm_magic.resources.sampler import Sampler
from llm_magic.widgets._common import stop_running
from llm_magic.widgets.cells import CellFigures, watch_cells
from llm_magic.widgets.models import ModelManagerPanel, ModelsView
from llm_magic.widgets.monitor import Monitor, gpu_note, gpu_reason
from llm_magic.widgets.panel import Panel
from llm_magic.widgets.playground import Playground

XSS = "<img src=x onerror=alert(1)><script>alert(2)</script>"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _wait_for(predicate: Any, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def _click(widget: Any, **content: Any) -> None:
    """A custom message from the page, as the comm delivers it."""
    widget._handle_msg({"content": {"data": {"method": "custom", "content": content}},
                        "buffers": []})


def _bundle(widget: Any) -> dict[str, Any]:
    bundle = widget._repr_mimebundle_()
    return bundle[0] if isinstance(bundle, tuple) else bundle


@pytest.fixture
def sampler():
    s = Sampler(interval=0.2)
    yield s
    s.close()


@pytest.fixture
def long_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from _models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("long"), arch="gpt2", context=4096)


# --------------------------------------------------------------------------- the facade


def test_facade_opens_the_widgets_and_keeps_the_sampler_module():
    from llm_magic.resources import get_sampler

    assert get_sampler() is get_sampler()
    assert "monitor" in lm.__all__ and "panel" in lm.__all__
    m = lm.monitor()
    p = lm.panel()
    try:
        assert isinstance(m, Monitor) and isinstance(p, Panel)
    finally:
        m.close()
        p.close()


# --------------------------------------------------------------------------- monitor


def test_monitor_traits_follow_the_sampler_from_its_thread(sampler):
    m = Monitor(sampler=sampler)
    seen: list[tuple[float, str]] = []
    m.observe(lambda change: seen.append((change["new"], threading.current_thread().name)),
              names="updated")
    try:
        assert m.running and sampler.is_running
        assert _wait_for(lambda: len(seen) >= 2, timeout=1.5), "no update within a second"
        assert all(name == "llm_magic-monitor" for _, name in seen)  # the sampler's thread
        assert seen[1][0] > seen[0][0]
        h = m.host
        assert re.fullmatch(r"\d+\.\d %", h["cpu_text"])
        assert re.fullmatch(r"[\d.]+ [KMGT]?B / [\d.]+ [KMGT]?B", h["ram_text"])
        assert h["ram_total"] > 0 and h["rss"] > 0
        values = list(m.series)  # one byte per figure: half-percents, 255 unknown
        assert len(values) >= 2 * len(m.series_names) and m.series_names[:2] == ["CPU", "RAM"]
        assert len(values) % len(m.series_names) == 0 and all(v <= 200 for v in values)
        ram = values[1 :: len(m.series_names)][-1] / 2
        assert abs(ram - 100 * h["ram_used"] / h["ram_total"]) < 5
    finally:
        m.close()
    assert not sampler.is_running


def test_without_gpu_figures_the_first_line_says_cpu_only_and_why(sampler):
    m = Monitor(sampler=sampler)
    try:
        sample = sampler.latest()
        assert sample is not None
        if sample.gpus:  # a machine with a GPU shows it instead
            assert m.gpus and m.gpu_note == "" and m.gpu_reason == ""
        else:  # a fact about the machine, not an error; the reason is for who asks
            assert m.gpus == [] and m.gpu_note == "CPU only"
            assert m.gpu_reason == gpu_reason(sample.gpu_error)
            assert m.gpu_reason.startswith("no NVIDIA GPU is visible: ")
            assert m.lines()[1] == f"CPU only ({m.gpu_reason})"
    finally:
        m.close()
    assert gpu_note(0) == "CPU only" and gpu_note(2) == ""
    assert gpu_reason("no NVIDIA GPU") == "no NVIDIA GPU is visible: NVML found no device"


def test_sparkline_ages_say_when_each_sample_was_taken(sampler):
    """The time axis grows with the samples: each row of the series carries its age."""
    import array

    m = Monitor(sampler=sampler)
    try:
        assert _wait_for(lambda: len(m.series) >= 4 * len(m.series_names), timeout=5)
        m.stop()  # no update between the readings of the two traits
        rows = len(m.series) // len(m.series_names)
        ages = array.array("f", m.series_ages)
        assert len(ages) == rows  # one age per row, oldest first, the newest is 0
        assert ages[-1] == 0 and list(ages) == sorted(ages, reverse=True)
        assert 0.1 < ages[0] < 120  # seconds: samples every 0.2 s here
    finally:
        m.close()


def test_unsupported_nvml_fields_show_as_na(fake_nvml, sampler):  # noqa: F811
    fake_nvml([FakeGPU("GPU-aaaa", name=XSS, utilization=0, temperature=0, power_mw=0,
                       not_supported={"utilization", "temperature", "power"})])
    m = Monitor(sampler=sampler)
    try:
        (g,) = m.gpus
        assert (g["util_text"], g["temp_text"], g["power_text"]) == ("n/a", "n/a", "n/a")
        assert g["util"] is None  # not a zero
        assert g["mem_text"] == "10.7 GB / 85.9 GB"
        assert m.gpu_note == ""
        assert m.series_names == ["CPU", "RAM", "cuda:0 util", "cuda:0 memory"]
        html = _bundle(m)["text/html"]
        assert "<img" not in html and "<script" not in html and "&lt;script&gt;" in html
        assert "utilization n/a" in repr(m) and "n/a, n/a" in repr(m)
    finally:
        m.close()


def test_supported_nvml_fields_and_model_shares(fake_nvml, sampler, manager, tiny_gpt2):  # noqa: F811
    fake_nvml([FakeGPU("GPU-aaaa", processes=[])])
    manager.load(str(tiny_gpt2), name="tiny")
    m = Monitor(sampler=sampler, manager=manager)
    try:
        (g,) = m.gpus
        assert (g["util_text"], g["temp_text"], g["power_text"]) == ("42 %", "55 °C", "250 W")
        assert [name for name, _ in m.host["models"]] == ["tiny"]  # on the CPU, so in RAM
        assert m.host["models_text"].startswith("tiny ")
    finally:
        m.close()


def test_stop_and_close_end_updates_and_the_last_monitor_stops_the_sampler(sampler):
    first, second = Monitor(sampler=sampler), Monitor(sampler=sampler)
    assert sampler.is_running
    first.stop()
    assert not first.running and sampler.is_running  # the other one still listens
    frozen = first.updated
    assert _wait_for(lambda: second.updated > frozen, timeout=1.5)
    assert first.updated == frozen
    _click(second, action="stop")  # the view's close button
    assert not second.running and not sampler.is_running
    second.start()
    assert sampler.is_running
    second.close()
    assert not sampler.is_running and second.comm is None
    first.close()
    third = Monitor(sampler=sampler)
    third.comm.handle_close({"content": {"data": {}}})  # the page closed the comm
    assert not third.running and not sampler.is_running


def test_monitor_static_fallback_is_escaped_text(sampler):
    m = Monitor(sampler=sampler)
    try:
        data = _bundle(m)
        assert {"text/plain", "text/html", WIDGET_VIEW} <= set(data)
        assert data["text/plain"].startswith("llm_magic monitor (live")
        assert "CPU " in data["text/plain"] and "RAM " in data["text/plain"]
        assert data["text/html"].count("<div>") == len(m.lines())
    finally:
        m.close()
    assert "(stopped" in repr(m)


def test_front_end_modules_ship_in_the_package_and_escape(sampler):
    for name in ("monitor.js", "models.js", "stream.js", "widgets.css"):
        path = Path(lm.__file__).parent / "widgets" / "static" / name
        text = path.read_text()
        assert not re.search(r"\.(inner|outer)HTML|insertAdjacentHTML|document\.write", text), name
        assert "://" not in text and not re.search(r"^import ", text, re.M), name  # no CDN
    m = Monitor(sampler=sampler)
    m.close()
    assert "export default { render }" in m._esm  # the file's text travels to the page


# --------------------------------------------------------------------------- per-cell figures


def test_cell_figures_after_each_cell_without_a_thread(capsys):
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "llm_magic")
    threads = threading.active_count()
    ip.run_line_magic("llm", "monitor --cell")
    watcher = watch_cells(ip)
    try:
        assert "on" in capsys.readouterr().out
        ip.run_cell("_grow = bytearray(60_000_000); _grow[::4096] = b'x' * len(_grow[::4096])")
        figures = watcher.last
        assert isinstance(figures, CellFigures)
        assert figures.rss_change > 40_000_000 and figures.seconds > 0
        assert figures.gpu_peaks == () or all(n >= 0 for _, n in figures.gpu_peaks)
        out = capsys.readouterr().out
        assert out.startswith("cell: ") and "RSS +" in out
        assert threading.active_count() == threads  # nothing runs between the events
        ip.run_cell("del _grow")
        assert watcher.last.rss_change <= 0
    finally:
        ip.run_line_magic("llm", "monitor --cell off")
    capsys.readouterr()
    ip.run_cell("1")
    assert "cell:" not in capsys.readouterr().out and not watcher.active
    with pytest.raises(UsageError):
        ip.run_line_magic("llm", "monitor --cell maybe")


def test_monitor_and_panel_magics_display_the_widgets(capsys):
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "llm_magic")
    before = set(ipywidgets.widgets.widget._instances)
    ip.run_line_magic("llm", "monitor")
    ip.run_line_magic("llm", "panel")
    new = [w for k, w in list(ipywidgets.widgets.widget._instances.items()) if k not in before]
    try:
        shown = capsys.readouterr().out
        assert "llm_magic monitor (live" in shown and "Playground" in shown
        assert any(isinstance(w, Monitor) for w in new) and any(isinstance(w, Panel) for w in new)
        ip.run_line_magic("llm", "help")
        assert "%llm monitor" in capsys.readouterr().out
    finally:
        for w in new:
            if isinstance(w, (Monitor, Panel)):
                w.close()


# --------------------------------------------------------------------------- model manager


def test_models_view_follows_loads_unloads_and_evictions(manager, sampler, tiny_gpt2,
                                                         tiny_llama):
    view = ModelsView(manager=manager, sampler=sampler)
    try:
        assert view.models == []
        manager.load(str(tiny_gpt2), name="a")  # by code, not by the panel
        (row,) = view.models  # the event updated it before load() returned
        assert (row["name"], row["source"], row["device"], row["dtype"]) == (
            "a", str(tiny_gpt2), "cpu", "float32")
        assert row["memory"].endswith("B") and row["estimate"] != "-"
        manager.load(str(tiny_llama), name="b")
        assert [m["name"] for m in view.models] == ["b", "a"]
        manager.unload("b")
        assert [m["name"] for m in view.models] == ["a"]
        manager.pin("a")  # no event for a pin: the next sampler tick shows it
        assert _wait_for(lambda: view.models[0]["pinned"], timeout=1.5)
        manager.pin("a", False)
        a, b = manager.info("a").memory, None
        manager.load(str(tiny_llama), name="b")
        b = manager.info("b").memory
        manager.unload("b")
        budget(manager=manager, cpu=int(max(a, b) * 1.5))
        with pytest.warns(LLMMagicWarning, match="Evicted"):
            manager.load(str(tiny_llama), name="b")
        assert [m["name"] for m in view.models] == ["b"]
        assert view.notice.startswith("Evicted 'a'")
    finally:
        view.close()


def test_unload_and_pin_buttons_call_the_api(manager, sampler, tiny_gpt2):
    view = ModelsView(manager=manager, sampler=sampler)
    try:
        manager.load(str(tiny_gpt2), name="a")
        _click(view, action="pin", name="a", pinned=True)
        assert manager.info("a").pinned and view.models[0]["pinned"]
        _click(view, action="unload", name="a")
        assert view.models == [] and list(manager.models()) == []
        assert view.notice == "Unloaded 'a'; " + view.notice.split("; ", 1)[1]
        _click(view, action="unload", name="a")  # already gone: one line, no traceback
        assert "not loaded" in view.error and "\n" not in view.error
    finally:
        view.close()


def test_load_form_estimates_loads_and_reports_errors_in_one_line(manager, sampler, tiny_gpt2):
    panel = ModelManagerPanel(manager=manager, sampler=sampler)
    states: list[dict[str, Any]] = []
    panel.view.observe(lambda change: states.append(dict(change["new"])), names="loading")
    try:
        panel.source.value = str(tiny_gpt2)
        _wait_for(lambda: panel.estimate.value.startswith(("Estimate:", "No estimate")), 30)
        assert panel.estimate.value.startswith("Estimate: about ")
        panel.load(wait=True)
        assert [m["name"] for m in panel.view.models] == [tiny_gpt2.name]
        assert panel.view.notice == f"Loaded {tiny_gpt2.name!r}."
        assert states[0]["name"] == tiny_gpt2.name and states[-1] == {}  # shown, then cleared
        assert not panel.load_button.disabled
        panel.source.value = str(tiny_gpt2.parent / "no-such-model")
        panel.load(wait=True)
        assert panel.view.error and "\n" not in panel.view.error
        assert "no-such-model" in panel.view.error
        assert [m["name"] for m in panel.view.models] == [tiny_gpt2.name]  # nothing lost
    finally:
        panel.close()


def test_model_text_is_escaped_in_the_static_fallback(manager, sampler, tiny_gpt2, tmp_path):
    import shutil

    odd = tmp_path / XSS.replace("/", "")
    shutil.copytree(tiny_gpt2, odd)
    manager.load(str(odd), name="xss")
    panel = Panel(manager=manager, sampler=sampler)
    try:
        panel.playground.prompt.value = XSS
        assert panel.models.view.models[0]["source"] == str(odd)  # data stays as it is
        html = _bundle(panel)["text/html"]
        assert "<img" not in html and "<script" not in html
        assert "&lt;img src=x onerror=alert(1)&gt;" in html
        assert XSS.replace("/", "") in _bundle(panel)["text/plain"]
    finally:
        panel.close()


# --------------------------------------------------------------------------- playground


def test_playground_generation_is_a_generation_like_any_other(manager, tiny_gpt2):
    manager.load(str(tiny_gpt2), name="tiny")
    pg = Playground(manager=manager)
    try:
        assert pg.model.options == ("tiny",) and pg.model.value == "tiny"
        assert pg.max_new_tokens.max == manager.info("tiny").context_length == 128
        pg.prompt.value = "Hello " + XSS
        pg.max_new_tokens.value = 20
        gen = pg.generate(wait=True)
        assert isinstance(gen, lm.Generation) and gen is manager.last_generation
        reference = lm.generate("Hello " + XSS, model="tiny", max_new_tokens=20,
                                manager=manager)
        assert gen.text == reference.text and gen.prompt == "Hello " + XSS
        assert pg.output.text == gen.text and pg.output.state == "done"
        assert pg.output.prompt == gen.prompt
        assert "20 new tokens" in pg.output.stats and "tokens/s" in pg.output.stats
        assert "time to first token" in pg.output.stats
        html = _bundle(pg.output)["text/html"]
        assert "<script" not in _bundle(pg)["text/html"] and "<img" not in html
        pg.seed.value = "x1"
        assert pg.generate() is None and "seed" in pg.output.error
        pg.seed.value, pg.temperature.value, pg.top_p.value = "3", 0.8, 0.9
        first = pg.generate(wait=True)
        again = pg.generate(wait=True)
        assert first is not None and again is not None and first.text == again.text
        assert first.params["seed"] == 3 and first.params["top_p"] == 0.9
        manager.unload("tiny")
        assert pg.model.options == () and pg.model.value is None
        assert pg.generate() is None and "No model is loaded" in pg.output.error
    finally:
        pg.close()


def test_stop_keeps_the_partial_text_and_the_model_stays_usable(manager, long_model):
    manager.load(str(long_model), name="long")
    pg = Playground(manager=manager)
    try:
        pg.prompt.value = "Hello"
        pg.max_new_tokens.value = 4000
        assert pg.generate() is None  # returns at once: the shell is free for other cells
        assert pg.running and pg.generate_button.disabled and not pg.stop_button.disabled
        assert _wait_for(lambda: len(pg.output.text) > 20, timeout=60)
        assert pg.output.state == "generating"
        pg.stop(wait=True)
        gen = manager.last_generation
        assert gen is not None and gen.interrupted and 0 < gen.stats.new_tokens < 4000
        assert pg.output.text == gen.text and len(gen.text) > 20
        assert pg.output.state == "stopped" and "interrupted" in pg.output.stats
        assert not pg.running and not pg.generate_button.disabled
        pg.max_new_tokens.value = 5
        assert pg.generate(wait=True).stats.new_tokens == 5  # type: ignore[union-attr]
    finally:
        pg.close()


def test_two_generations_on_one_model_never_interleave(manager, long_model):
    manager.load(str(long_model), name="long")
    solo = manager.models()[0].name
    reference = lm.generate("Hello", model=solo, max_new_tokens=300, manager=manager).text
    order: list[str] = []
    stop = manager.events.subscribe(lambda e: order.append(e.kind),
                                    kinds={"generation_start", "generation_end"})
    one, two = Playground(manager=manager), Playground(manager=manager)
    try:
        for pg in (one, two):
            pg.prompt.value, pg.max_new_tokens.value = "Hello", 300
        one.generate()
        assert _wait_for(lambda: order == ["generation_start"], timeout=30)
        two.generate()
        assert two.output.state == "waiting"
        assert one.generate() is None and "already running" in one.output.error
        cell = lm.generate("Hello", model=solo, max_new_tokens=300, manager=manager).text
        one._thread.join()  # type: ignore[union-attr]
        two._thread.join()  # type: ignore[union-attr]
        assert order == ["generation_start", "generation_end"] * 3
        assert one.output.text == two.output.text == cell == reference
    finally:
        stop()
        one.close()
        two.close()


# --------------------------------------------------------------------------- Stop in the table


def _when_streaming(manager: Any, model: str, act: Any, tokens: int = 10) -> threading.Thread:
    """A thread that calls ``act()`` once a generation on ``model`` has made ``tokens``."""
    started: list[Any] = []
    unsubscribe = manager.events.subscribe(
        lambda e: started.append(e.data["generation"]) if e.model == model else None,
        kinds={"generation_start"})

    def wait_then_act() -> None:
        try:
            if _wait_for(lambda: bool(started) and started[0].progress()[1] >= tokens, 60):
                act()
        finally:
            unsubscribe()

    thread = threading.Thread(target=wait_then_act, daemon=True)
    thread.start()
    return thread


def test_stop_in_the_models_table_stops_a_cell_and_keeps_its_text(long_model, capsys):
    """The Stop that "Model 'x' is generating. Stop that generation first" points at."""
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "llm_magic")
    manager = lm.get_manager()
    manager.load(str(long_model), name="stoppable")
    view = ModelsView(manager=manager)
    try:
        clicker = _when_streaming(manager, "stoppable",
                                  lambda: _click(view, action="stop", name="stoppable"))
        result = ip.run_cell("%%llm stoppable -n 4000 --no-chat\nHello")
        clicker.join(10)
        assert result.error_in_exec is None  # the cell ends as a stopped generation ends
        gen = ip.user_ns["_llm"]
        assert gen.interrupted and 0 < gen.stats.new_tokens < 4000 and len(gen.text) > 20
        assert gen is manager.last_generation
        assert gen.text in capsys.readouterr().out  # the cell showed the text it kept
        assert view.notice == "Stopped the generation on 'stoppable'; its text so far is kept."
        assert not stop_running(manager.events, "stoppable")  # nothing left registered
        ip.run_cell("%%llm stoppable -n 3 --no-chat\nHello")
        assert ip.user_ns["_llm"].stats.new_tokens == 3  # the model stays usable
    finally:
        view.close()
        manager.unload("stoppable")


def test_stop_in_the_models_table_stops_the_generation_that_holds_the_model(manager,
                                                                           long_model):
    """The playground's generation stops; one waiting for the model's lock is left alone."""
    manager.load(str(long_model), name="long")
    view = ModelsView(manager=manager)
    one, two = Playground(manager=manager), Playground(manager=manager)
    try:
        one.prompt.value, one.max_new_tokens.value = "Hello", 4000
        two.prompt.value, two.max_new_tokens.value = "Hello", 40
        clicker = _when_streaming(manager, "long", lambda: (
            two.generate(), _click(view, action="stop", name="long")))
        one.generate(wait=True)
        clicker.join(10)
        two._thread.join()  # type: ignore[union-attr]
        assert one.output.state == "stopped" and one.last is not None
        assert 0 < one.last.stats.new_tokens < 4000 and one.output.text == one.last.text
        assert two.output.state == "done" and two.last is not None
        assert two.last.stats.new_tokens == 40  # it waited, then ran to its end
    finally:
        view.close()
        one.close()
        two.close()


def test_stop_on_a_model_with_nothing_stoppable_says_why_in_one_line(manager, long_model):
    manager.load(str(long_model), name="long")
    view = ModelsView(manager=manager)
    try:
        _click(view, action="stop", name="long")
        assert view.error == "Nothing runs on 'long' now: its generation has ended."
        done: list[Any] = []
        clicker = _when_streaming(manager, "long",
                                  lambda: _click(view, action="stop", name="long"))
        done.append(lm.generate("Hello", model="long", max_new_tokens=200, manager=manager))
        clicker.join(10)
        assert done[0].stats.new_tokens == 200  # plain code passed no stop_event: not stopped
        assert view.error.startswith("Model 'long' is busy with work this panel cannot stop")
        assert "interrupt the kernel" in view.error and "\n" not in view.error
    finally:
        view.close()


# --------------------------------------------------------------------------- static snapshots


def test_panel_snapshot_shows_the_table_the_load_form_and_the_playground(manager, sampler,
                                                                         tiny_gpt2):
    manager.load(str(tiny_gpt2), name="tiny")
    panel = Panel(manager=manager, sampler=sampler)
    try:
        data = _bundle(panel)
        html, plain = data["text/html"], data["text/plain"]
        for label in ("<b>Models</b>", "<b>Playground</b>", ">estimated<", ">measured<",
                      ">last used<", ">tiny<", "source ", "demo, a model folder or a hub id",
                      "dtype ", "device ", ">Load<", "prompt ", "Write a prompt…",
                      "temperature ", "top-p ", "max tokens ", "seed ", ">Generate<", ">Stop<"):
            assert label in html, label
        assert html.index("<b>Models</b>") < html.index(">Load<") < html.index(
            "<b>Playground</b>") < html.index(">Generate<")
        assert "dashed" in html.split(">Generate<")[1].split(">Stop<")[0]  # Stop is disabled
        assert plain.splitlines() == [
            "Models", panel.models.view.lines()[0],
            "load a model: source: (demo, a model folder or a hub id), dtype: auto, "
            "device: auto [Load]",
            "Playground", "prompt: (empty)",
            "model: tiny, seed: (none), temperature: 0.00, top-p: 1.00, max tokens: 128",
            "[Generate] [Stop (disabled)]"]
    finally:
        panel.close()


def test_the_panel_and_the_monitor_show_a_quantized_model_and_what_it_saved(
        manager, sampler, tiny_llama):
    """The load form's quantize choice estimates and loads with it; the table and the
    monitor say which models are quantized and how much memory that gave back."""
    pytest.importorskip("torchao", reason="quantized loading needs the [quant] extra")
    panel = ModelManagerPanel(manager=manager, sampler=sampler)
    monitor = Monitor(sampler=sampler, manager=manager)
    try:
        panel.source.value = str(tiny_llama)
        _wait_for(lambda: panel.estimate.value.startswith(("Estimate:", "No estimate")), 30)
        plain = panel.estimate.value
        panel.quantize.value = "int8"
        _wait_for(lambda: panel.estimate.value.startswith("Estimate:")
                  and panel.estimate.value != plain, 30)
        panel.load(wait=True)
        info = manager.info(manager.names()[0])
        assert info.quantization == "int8" and info.saved > 0
        row = panel.view.models[0]
        assert row["quantized"].startswith("int8 (saved ")
        bundle = panel._repr_mimebundle_()
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        assert "int8 (saved " in data["text/html"]
        assert _wait_for(lambda: "int8, saved" in monitor.host.get("models_text", ""), 5)
    finally:
        monitor.stop()
        panel.close()
