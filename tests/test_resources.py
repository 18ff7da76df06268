"""Estimates, budgets, eviction, pinning, placement, out-of-memory handling and threads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_magic as lm
from llm_magic.backends.base import LoadSpec
from llm_magic.backends.hf import HFBackend
from llm_magic.common.sizes import format_size, parse_limit
from llm_magic.errors import BackendError, BudgetExceededError, InvalidOptionError, LLMMagicWarning
from llm_magic.manager import ModelRef
from llm_magic.manager import room as manager_budget
from llm_magic.resources import budget as resource_budget
from llm_magic.resources import cpu as _threads
from llm_magic.resources import estimate as _estimate
from llm_magic.resources import rooms as _rooms
from llm_magic.resources import sysmem as _sysmem
from llm_magic.resources.placement import DeviceRoom, Placement, Resident, plan_placement

# -- sizes and device names ----------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("8GB", 8 * 10**9), ("8 GB", 8 * 10**9), ("512MiB", 512 * 2**20), ("1.5gb", 1_500_000_000),
    ("2e9", 2 * 10**9), (3000, 3000), (0.5, 0.5), ("0.5", 0.5), ("25%", 0.25), (1, 1.0),
])
def test_budget_values_read_as_sizes_or_fractions(text, expected):
    assert parse_limit(text) == expected


@pytest.mark.parametrize("bad", ["", "x", "GB", "5XB", "0", -1, 0, "150%", True, None, [1]])
def test_bad_budget_values_say_how_to_write_one(bad):
    with pytest.raises(InvalidOptionError):
        parse_limit(bad)


def test_device_keywords():
    keys = ("cpu", "cuda0", "cuda_1", "cuda", "GPU2", "cuda:3")
    assert [resource_budget.device_key(k) for k in keys
            ] == ["cpu", "cuda:0", "cuda:1", "cuda:0", "cuda:2", "cuda:3"]
    with pytest.raises(InvalidOptionError, match="cpu, cuda0"):
        resource_budget.device_key("tpu0")


# -- the placement planner, a pure function -------------------------------------

MB = 10**6


def _res(name: str, mb: int, t: float, device: str = "cpu", **kw) -> Resident:
    return Resident(name, ((device, mb * MB),), last_used=t, **kw)


def test_a_load_that_fits_evicts_nothing():
    p = plan_placement(50 * MB, "cpu", [DeviceRoom("cpu", 100 * MB)], [_res("a", 40, 1)])
    assert p == Placement("cpu", expected=(("cpu", 50 * MB),))


def test_eviction_takes_the_least_recently_used_first_and_only_what_is_needed():
    residents = [_res("new", 30, 3), _res("oldest", 30, 1), _res("older", 30, 2)]
    p = plan_placement(40 * MB, "cpu", [DeviceRoom("cpu", 100 * MB)], residents)
    assert p.evict == ("oldest",)
    p = plan_placement(65 * MB, "cpu", [DeviceRoom("cpu", 100 * MB)], residents)
    assert p.evict == ("oldest", "older")


def test_pinned_and_generating_models_are_never_evicted():
    residents = [_res("pinned", 40, 1, evictable=False, pinned=True),
                 _res("busy", 40, 2, evictable=False), _res("idle", 10, 3)]
    p = plan_placement(20 * MB, "cpu", [DeviceRoom("cpu", 100 * MB)], residents)
    assert p.evict == ("idle",)
    with pytest.raises(BudgetExceededError) as err:
        plan_placement(40 * MB, "cpu", [DeviceRoom("cpu", 100 * MB)], residents,
                       source="'big'", dtype="float32")
    text = str(err.value)
    for part in ("'big' needs about 40.0 MB in float32", "cpu budget is 100.0 MB",
                 "'pinned' (pinned)", "'busy' (generating)", "Nothing was evicted",
                 "dtype='bfloat16'", "lm.budget(cpu=", "lm.unload", "lm.pin(name, False)"):
        assert part in text, part


def test_free_memory_on_the_device_binds_as_well_as_the_budget():
    rooms = [DeviceRoom("cpu", 100 * MB, free=30 * MB)]
    with pytest.raises(BudgetExceededError, match="the device has 30.0 MB free"):
        plan_placement(40 * MB, "cpu", rooms)
    # Evicting a model frees its memory on the device as well as in the budget.
    assert plan_placement(40 * MB, "cpu", rooms, [_res("a", 20, 1)]).evict == ("a",)


def test_a_budget_does_not_see_models_on_other_devices():
    rooms = [DeviceRoom("cuda:0", 100 * MB), DeviceRoom("cpu", 100 * MB)]
    residents = [_res("on_cpu", 90, 1), _res("on_gpu", 10, 2, device="cuda:0")]
    assert plan_placement(90 * MB, "cuda:0", rooms, residents).evict == ()
    p = plan_placement(95 * MB, "cuda:0", rooms, residents)
    assert p.evict == ("on_gpu",) and p.device == "cuda:0"


TWO_GPUS = [DeviceRoom("cuda:0", 40 * MB), DeviceRoom("cuda:1", 40 * MB),
            DeviceRoom("cpu", 200 * MB)]


def test_auto_puts_a_model_that_fits_on_one_gpu_whole():
    assert plan_placement(30 * MB, "auto", TWO_GPUS).device == "cuda:0"
    busy = [_res("x", 20, 1, device="cuda:0")]
    # cuda:1 has room without evicting anything: that beats evicting on cuda:0.
    p = plan_placement(30 * MB, "auto", TWO_GPUS, busy)
    assert (p.device, p.evict) == ("cuda:1", ())


def test_auto_spreads_over_gpus_with_max_memory_from_the_budget():
    p = plan_placement(60 * MB, "auto", TWO_GPUS, chunk=5 * MB)
    assert p.device_map == "auto" and p.device == "auto" and not p.offloaded
    assert p.accelerate_max_memory() == {0: 40 * MB, 1: 40 * MB}
    assert dict(p.expected) == {"cuda:0": 35 * MB, "cuda:1": 25 * MB}
    assert "device_map='auto'" in str(p)


def test_a_split_keeps_a_layer_of_spare_room_per_gpu():
    # 78 MB fit in 2 x 40 MB only if no layer straddles; with 5 MB layers it goes to CPU too.
    p = plan_placement(78 * MB, "auto", TWO_GPUS, chunk=5 * MB)
    assert p.offloaded and p.accelerate_max_memory() == {0: 40 * MB, 1: 40 * MB, "cpu": 200 * MB}


def test_auto_evicts_on_the_gpus_before_offloading_to_cpu():
    residents = [_res("old", 30, 1, device="cuda:0")]
    p = plan_placement(70 * MB, "auto", TWO_GPUS, residents)
    assert p.evict == ("old",) and p.device_map == "auto" and not p.offloaded


def test_auto_offloads_to_cpu_when_the_gpus_cannot_hold_it():
    p = plan_placement(150 * MB, "auto", TWO_GPUS, chunk=5 * MB)
    assert p.offloaded and p.evict == ()
    with pytest.raises(BudgetExceededError, match="does not fit on the GPUs or in CPU memory"):
        plan_placement(400 * MB, "auto", TWO_GPUS)


def test_a_single_gpu_with_a_small_budget_offloads():
    rooms = [DeviceRoom("cuda:0", 40 * MB), DeviceRoom("cpu", 200 * MB)]
    p = plan_placement(60 * MB, "auto", rooms, chunk=2 * MB)
    assert p.accelerate_max_memory() == {0: 40 * MB, "cpu": 200 * MB}
    with pytest.raises(BudgetExceededError, match="device='auto' to offload"):
        plan_placement(60 * MB, "cuda:0", rooms)


_residents = st.lists(
    st.tuples(st.integers(1, 60), st.floats(0, 100), st.booleans(), st.sampled_from(["cpu", "x"])),
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(need=st.integers(1, 150), limit=st.integers(1, 150), free=st.none() | st.integers(0, 150),
       rows=_residents)
def test_plans_fit_and_evict_an_lru_prefix_of_idle_models(need, limit, free, rows):
    residents = [Resident(f"m{i}", ((dev, mb),), t, evictable=ok)
                 for i, (mb, t, ok, dev) in enumerate(rows)]
    rooms = [DeviceRoom("cpu", limit, free)]
    idle = sorted((r for r in residents if r.evictable and r.on("cpu")), key=lambda r: r.last_used)
    used = sum(r.on("cpu") for r in residents)

    def room(evicted: list[Resident]) -> int:
        base = limit - used if free is None else min(limit - used, free)
        return base + sum(r.on("cpu") for r in evicted)

    try:
        p = plan_placement(need, "cpu", rooms, residents)
    except BudgetExceededError:
        assert room(idle) < need
        return
    chosen = [next(r for r in residents if r.name == n) for n in p.evict]
    assert chosen == idle[: len(chosen)]
    assert room(chosen) >= need
    assert not chosen or room(chosen[:-1]) < need


# -- estimates ---------------------------------------------------------------------


def _measured(path: Path, dtype: str) -> int:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    return int(model.get_memory_footprint())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("which", ["tiny_gpt2", "tiny_llama"])
def test_estimates_are_within_15_percent_by_every_method(which, dtype, request):
    path = request.getfixturevalue(which)
    measured = _measured(path, dtype)
    e = lm.estimate(str(path), dtype=dtype, device="cpu")
    assert e.method == "meta" and e.dtype == dtype and e.device == "cpu"
    assert abs(e.memory - measured) <= 0.15 * measured
    config = json.loads((path / "config.json").read_text())
    for method in (_estimate._from_safetensors, _estimate._from_file_sizes):
        found = method(str(path), dtype, config)
        assert found is not None and abs(found.memory - measured) <= 0.15 * measured, method


def test_a_model_transformers_cannot_build_is_estimated_from_its_headers(tiny_gpt2, tmp_path):
    odd = tmp_path / "odd"
    shutil.copytree(tiny_gpt2, odd)
    config = json.loads((odd / "config.json").read_text())
    config["model_type"] = "no-such-architecture"
    (odd / "config.json").write_text(json.dumps(config))
    e = _estimate.estimate_path(str(odd), source="odd", dtype="float32", device="cpu")
    assert e.method == "safetensors"
    assert abs(e.memory - _measured(tiny_gpt2, "float32")) <= 0.15 * e.memory


def test_estimate_loads_nothing_and_renders(tiny_gpt2):
    before = lm.get_manager().names()
    e = lm.estimate(str(tiny_gpt2), dtype="bf16", device="cpu")
    assert lm.get_manager().names() == before
    assert format_size(e.memory) in str(e) and "bfloat16 on cpu" in str(e)
    assert "<p" in e._repr_html_() and int(e) == e.memory
    with pytest.raises(InvalidOptionError):
        lm.estimate("http://127.0.0.1:9/v1")


def test_the_demo_model_estimate_is_within_15_percent():
    from llm_magic.demo import MODEL_DIR

    if not (MODEL_DIR / "model.safetensors").exists():
        pytest.skip("the demo model is not trained yet")
    measured = _measured(MODEL_DIR, "float32")
    assert abs(lm.estimate("demo", device="cpu").memory - measured) <= 0.15 * measured


# -- budgets -------------------------------------------------------------------------


def test_budget_set_show_and_reset(manager):
    total = _sysmem.cpu_total()
    b = lm.budget(manager=manager)
    assert b["cpu"].limit == int(total * _rooms.DEFAULT_FRACTIONS["cpu"])
    assert b["cpu"].setting.startswith("default")
    b = lm.budget(manager=manager, cpu="8GB")
    assert b["cpu"].limit == 8 * 10**9 and manager.limits == {"cpu": 8 * 10**9}
    b = manager_budget.budget(manager=manager, cpu="0.25")  # as `%llm budget cpu=0.25` calls it
    assert b["cpu"].limit == int(total * 0.25) and "25%" in b["cpu"].setting
    assert lm.budget(manager=manager, cpu=None)["cpu"].setting.startswith("default")
    html = b._repr_html_()
    assert html.startswith("<table") and "cpu" in html and "device free" in str(b)


def test_budget_refuses_unknown_devices(manager):
    with pytest.raises(InvalidOptionError):
        lm.budget(manager=manager, tpu="1GB")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidOptionError, match="no cuda:0"):
            lm.budget(manager=manager, cuda0="1GB")


def _sizes(*paths_and_dtypes: tuple[Path, str]) -> list[int]:
    return [lm.estimate(str(p), dtype=d, device="cpu").memory for p, d in paths_and_dtypes]


def test_a_load_over_budget_evicts_the_least_recently_used_idle_model(manager, tiny_gpt2,
                                                                        tiny_llama):
    a, b, c = _sizes((tiny_gpt2, "float32"), (tiny_llama, "float32"), (tiny_gpt2, "bfloat16"))
    lm.budget(manager=manager, cpu=a + b + c // 2)
    events = []
    manager.events.subscribe(lambda e: events.append((e.kind, e.model)))
    manager.load(str(tiny_gpt2), name="a")
    manager.load(str(tiny_llama), name="b")
    time.sleep(0.01)
    lm.generate("The import", model="a", max_new_tokens=2, manager=manager)  # a is fresher now
    with pytest.warns(LLMMagicWarning, match=r"Evicted 'b' .* to make room for 'c'"):
        manager.load(str(tiny_gpt2), name="c", dtype="bfloat16")
    assert sorted(manager.names()) == ["a", "c"]
    assert ("evicted", "b") in events and ("unloaded", "b") in events
    info = manager.info("c")
    assert info.estimate is not None and abs(info.estimate - info.memory) <= 0.15 * info.memory
    assert "estimated" in repr(ModelRef("c", manager))


def test_pinned_and_generating_models_stay_and_the_load_is_refused(manager, tiny_gpt2,
                                                                     tiny_llama):
    a, b = _sizes((tiny_gpt2, "float32"), (tiny_llama, "float32"))
    lm.budget(manager=manager, cpu=a + b // 2)
    manager.load(str(tiny_gpt2), name="a", pin=True)
    assert manager.info("a").pinned
    events = []
    manager.events.subscribe(lambda e: events.append((e.kind, e.model)))
    with pytest.raises(BudgetExceededError) as err:
        manager.load(str(tiny_llama), name="b")
    assert manager.names() == ["a"] and ("loading", "b") not in events  # no weight was read
    text = str(err.value)
    assert format_size(b) in text and format_size(a + b // 2) in text and "'a' (pinned)" in text
    manager.pin("a", False)
    with manager.checkout("a"):  # generating: not evictable either
        with pytest.raises(BudgetExceededError, match="'a' \\(generating\\)"):
            manager.load(str(tiny_llama), name="b")
    with pytest.warns(LLMMagicWarning, match="Evicted 'a'") as caught:
        manager.load(str(tiny_llama), name="b")
    assert manager.names() == ["b"]
    assert caught[0].filename == __file__  # the caller's line, not llm_magic's


def test_loading_again_with_pin_pins_the_resident_model(manager, tiny_gpt2):
    manager.load(str(tiny_gpt2), name="a")
    manager.load(str(tiny_gpt2), name="a", pin=True)
    assert manager.info("a").pinned and "(pinned)" in str(manager.models())


def test_models_show_estimate_and_measured_memory(manager, tiny_llama):
    manager.load(str(tiny_llama), name="llama")
    table = manager.models()
    row = dict(zip(table.columns, table.rows()[0], strict=True))
    info = manager.info("llama")
    assert row["memory"] == format_size(info.memory) and row["estimate"] == format_size(
        info.estimate)
    assert info.placement == (("cpu", info.memory),)
    assert lm.budget(manager=manager)["cpu"].used == info.memory


def test_the_kernel_manager_reports_model_memory_to_the_sampler(tiny_gpt2):
    from llm_magic.resources.sampler import get_sampler

    manager = lm.get_manager()
    # Another test may have this model resident under another name: then that one answers.
    name = manager.load(str(tiny_gpt2), name="sampled").name
    try:
        models = dict(get_sampler().sample_now().models)
        assert models[name] == manager.info(name).memory
    finally:
        if name == "sampled":
            manager.unload(name)


# -- placement through accelerate, on this machine's CPU ---------------------------------


def test_device_map_loads_use_max_memory_and_refuse_disk_offload(tiny_llama):
    spec = LoadSpec(source="llama", name="llama", kind="local", path=str(tiny_llama),
                    dtype="float32", device="cpu")
    backend = HFBackend.load(spec, Placement("auto", "auto", (("cpu", 10**9),)))
    facts = backend.describe()
    assert facts["device"] == "cpu" and facts["placement"] == {"cpu": facts["memory"]}
    backend.close()
    with pytest.raises(BackendError, match="offload"):
        HFBackend.load(spec, Placement("auto", "auto", (("cpu", 10_000),)))


# -- out of memory ------------------------------------------------------------------------


def test_out_of_memory_while_generating_keeps_the_model_usable(manager, tiny_gpt2):
    handle = manager.load(str(tiny_gpt2), name="a")
    model = handle.model

    def explode(*_args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    hook = model.transformer.h[0].register_forward_pre_hook(explode)
    try:
        with pytest.raises(BackendError, match=r"Out of memory on cpu .*stays loaded"):
            lm.generate("The import", model="a", max_new_tokens=4, manager=manager)
    finally:
        hook.remove()
        del model
    assert manager.names() == ["a"] and not manager.info("a").generating
    assert lm.generate("The import", model="a", max_new_tokens=3, manager=manager).text


def test_out_of_memory_while_loading_drops_the_partial_model(tmp_path):
    # A real allocation failure: the child caps its address space just above what it uses
    # and loads a 25 MB model in bfloat16 (converted, so allocated, not mapped from the file).
    from _models import build_tiny_model

    big = build_tiny_model(tmp_path / "big", arch="gpt2", n_embd=512, n_layer=4, context=128)
    script = textwrap.dedent(f"""
        import resource, psutil, torch, transformers
        from llm_magic.manager import ModelManager
        from llm_magic.errors import BackendError
        m = ModelManager()
        m.load({str(big)!r}, name="warm"); m.unload("warm")
        vms = psutil.Process().memory_info().vms
        resource.setrlimit(resource.RLIMIT_AS, (vms + 10_000_000, resource.RLIM_INFINITY))
        try:
            m.load({str(big)!r}, name="big", dtype="bfloat16")
        except BackendError as exc:
            print("ERROR", exc)
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY,) * 2)
        print("NAMES", m.names())
        print("AGAIN", m.load({str(big)!r}, name="big", dtype="bfloat16").info.memory > 0)
    """)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, timeout=120).stdout
    assert "ERROR Out of memory while loading" in out and "memory returned" in out, out
    assert "NAMES []" in out and "AGAIN True" in out, out


# -- threads ---------------------------------------------------------------------------------


@pytest.fixture
def fresh_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(_threads, "_threads_settled", False)
    for var in ("LLM_MAGIC_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    yield
    torch.set_num_threads(before)


def test_set_threads(fresh_threads):
    assert lm.set_threads(1) == 1 and torch.get_num_threads() == 1 and lm.threads() == 1
    assert _threads.apply_default_threads() is None  # the user chose: leave it
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(InvalidOptionError):
            lm.set_threads(bad)


def test_the_default_applies_at_the_first_load_unless_threads_were_chosen(
        fresh_threads, monkeypatch, manager, tiny_gpt2):
    torch.set_num_threads(_threads._torch_default_threads())
    manager.load(str(tiny_gpt2), name="a")
    assert torch.get_num_threads() == max(1, _threads._usable_cores() - 1)
    monkeypatch.setattr(_threads, "_threads_settled", False)
    torch.set_num_threads(3)  # the user's own choice
    assert _threads.apply_default_threads() is None and torch.get_num_threads() == 3
    monkeypatch.setattr(_threads, "_threads_settled", False)
    monkeypatch.setenv("LLM_MAGIC_THREADS", "2")
    assert _threads.apply_default_threads() == 2 and torch.get_num_threads() == 2
    monkeypatch.setattr(_threads, "_threads_settled", False)
    monkeypatch.setenv("LLM_MAGIC_THREADS", "many")
    with pytest.warns(LLMMagicWarning, match="LLM_MAGIC_THREADS"):
        _threads.apply_default_threads()
