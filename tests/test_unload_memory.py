"""Unloading (and eviction) really returns memory: process RSS drops by the model's size.

The model here is ~58 MB in float32 so that its memory stands far above the
noise of a Python process. Both load paths are covered: float32 weights mapped
from the safetensors file, and bfloat16 weights converted into freshly
allocated memory (the path where glibc used to keep freed weights).
"""

from __future__ import annotations

import gc
import time

import psutil
import pytest

import llm_magic as lm
from llm_magic.errors import LLMMagicWarning

_PROCESS = psutil.Process()


def _rss() -> int:
    return int(_PROCESS.memory_info().rss)


@pytest.fixture(scope="module")
def sized_model(tmp_path_factory):
    """A random GPT-2 of 14.5M parameters: 58 MB in float32, 29 MB in bfloat16."""
    from _models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("sized"), arch="gpt2", n_embd=384, n_layer=8,
                            context=256)


def _load_and_touch(manager, path, name: str, dtype: str) -> int:
    import torch

    handle = manager.load(str(path), name=name, dtype=dtype)
    with torch.no_grad():  # read every weight, so weights mapped from the file are resident too
        for tensor in manager.backend(name).memory_owner().parameters():
            tensor.sum()
    return handle.info.memory


def _drop_within_a_second(before: int, target: int) -> int:
    deadline = time.perf_counter() + 1.0
    dropped = before - _rss()
    while dropped < target and time.perf_counter() < deadline:
        time.sleep(0.05)
        dropped = before - _rss()
    return dropped


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_unload_returns_the_models_memory_to_the_system(manager, sized_model, dtype):
    _load_and_touch(manager, sized_model, "warmup", dtype)  # lazy imports and caches first
    manager.unload("warmup")
    for attempt in range(2):
        gc.collect()
        memory = _load_and_touch(manager, sized_model, f"m{attempt}", dtype)
        before = _rss()
        report = manager.unload(f"m{attempt}")[0]
        assert report.freed and report.holders == ()
        dropped = _drop_within_a_second(before, int(0.9 * memory))
        assert dropped >= 0.9 * memory, (
            f"RSS dropped {dropped / 1e6:.1f} MB of {memory / 1e6:.1f} MB ({dtype}, try {attempt})"
        )


def test_eviction_returns_memory_too(manager, sized_model, tiny_gpt2):
    memory = _load_and_touch(manager, sized_model, "big", "bfloat16")
    lm.budget(manager=manager, cpu=memory + 100_000)
    before = _rss()
    with pytest.warns(LLMMagicWarning, match="Evicted 'big'"):
        manager.load(str(tiny_gpt2), name="small", dtype="float32")
    assert manager.names() == ["small"]
    # The small model came in meanwhile; it is far below the 10% slack.
    assert _drop_within_a_second(before, int(0.9 * memory)) >= 0.9 * memory - 1_000_000


def test_an_unload_held_elsewhere_says_so_and_claims_nothing(manager, sized_model):
    memory = _load_and_touch(manager, sized_model, "held", "bfloat16")
    kept = manager.backend("held").memory_owner()  # like `model = handle.model` in a cell
    before = _rss()
    report = manager.unload("held")[0]
    assert not report.freed and report.holders
    assert "still held by" in report.message and "freed" not in report.message
    assert before - _rss() < 0.5 * memory  # nothing came back: the report tells the truth
    del kept
    gc.collect()
    from llm_magic.backends.hf import release_memory

    release_memory()
    assert _drop_within_a_second(before, int(0.9 * memory)) >= 0.9 * memory
