"""Resource management on a real CUDA device (skipped without one).

Estimates against ``torch.cuda.memory_allocated``, eviction under a GPU budget,
unload returning the allocator to its baseline, real out-of-memory errors
(provoked with ``torch.cuda.set_per_process_memory_fraction``) and offloading
with ``device="auto"`` when the budget is smaller than the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from _cuda import allocated, warm_cublas

import llm_magic as lm
from llm_magic.errors import BackendError, BudgetExceededError, LLMMagicWarning

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def gpu_model(tmp_path_factory):
    """A random GPT-2 of ~25M parameters: ~50 MB in bfloat16, with a 1024-token context."""
    from _models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("gpu"), arch="gpt2", n_embd=512, n_layer=8,
                            context=1024)


@pytest.fixture(scope="module", autouse=True)
def _warm_cuda() -> None:
    warm_cublas()


@pytest.fixture
def baseline(manager) -> Iterator[int]:
    torch.cuda.empty_cache()
    yield allocated()
    torch.cuda.set_per_process_memory_fraction(1.0, 0)


@contextlib.contextmanager
def _gpu_limited_to(extra: int) -> Iterator[None]:
    """Let the caching allocator grow by only ``extra`` bytes: a real OOM past that."""
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_reserved(0) + extra) / total, 0)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)


def test_estimate_matches_the_cuda_allocation_in_bf16(manager, baseline, gpu_model):
    e = lm.estimate(str(gpu_model), dtype="bfloat16", device="cuda:0")
    handle = manager.load(str(gpu_model), name="g", dtype="bfloat16", device="cuda:0")
    measured = allocated() - baseline
    assert abs(e.memory - measured) <= 0.15 * measured, (e.memory, measured)
    info = handle.info
    assert info.device == "cuda:0" and info.dtype == "bfloat16"
    assert abs(info.estimate - info.memory) <= 0.15 * info.memory


def test_unload_returns_the_allocator_to_its_baseline(manager, baseline, gpu_model):
    reserved = torch.cuda.memory_reserved(0)
    manager.load(str(gpu_model), name="g", dtype="bfloat16", device="cuda:0")
    lm.generate("The import statement", model="g", max_new_tokens=16, manager=manager)
    report = manager.unload("g")[0]
    assert report.freed
    assert allocated() == baseline
    assert torch.cuda.memory_reserved(0) <= reserved  # the cache was emptied too


def test_a_gpu_budget_evicts_and_refuses(manager, baseline, gpu_model):
    size = lm.estimate(str(gpu_model), dtype="bfloat16", device="cuda:0").memory
    lm.budget(manager=manager, cuda0=int(1.5 * size))
    manager.load(str(gpu_model), name="a", dtype="bfloat16", device="cuda:0")
    with pytest.warns(LLMMagicWarning, match="Evicted 'a'"):
        manager.load(str(gpu_model), name="b", dtype="float16", device="cuda:0")
    assert manager.names() == ["b"]
    assert allocated() - baseline <= 1.15 * size
    with pytest.raises(BudgetExceededError, match="cuda:0 budget"):
        manager.load(str(gpu_model), name="c", dtype="float32", device="cuda:0")
    assert manager.names() == ["b"]


def test_out_of_memory_while_loading_leaves_nothing_behind(manager, baseline, gpu_model):
    with _gpu_limited_to(8 * 2**20), pytest.raises(BackendError, match="Out of memory while"):
        manager.load(str(gpu_model), name="g", dtype="float32", device="cuda:0")
    assert manager.names() == []
    assert allocated() == baseline
    assert manager.load(str(gpu_model), name="g", dtype="bfloat16", device="cuda:0").loaded


def test_out_of_memory_while_generating_keeps_the_model(manager, baseline, gpu_model):
    handle = manager.load(str(gpu_model), name="g", dtype="bfloat16", device="cuda:0")
    loaded = allocated()
    words = "the import statement and the class definition " * 200
    ids = handle.tokenizer(words).input_ids[:900]
    prompt = handle.tokenizer.decode(ids)
    with _gpu_limited_to(8 * 2**20), pytest.raises(BackendError, match="Out of memory on cuda:0"):
        lm.generate(prompt, model="g", max_new_tokens=64, manager=manager)
    assert manager.names() == ["g"] and not manager.info("g").generating
    # The KV cache and activations were returned (the prompt's ids, a few KB, stay with the
    # error's traceback while it lives).
    assert allocated() - loaded < 2**20
    assert lm.generate("The import", model="g", max_new_tokens=4, manager=manager).text


def test_auto_offloads_to_cpu_when_the_gpu_budget_is_smaller(manager, baseline, gpu_model):
    size = lm.estimate(str(gpu_model), dtype="bfloat16", device="cuda:0").memory
    lm.budget(manager=manager, cuda0=size // 2)
    handle = manager.load(str(gpu_model), name="g", dtype="bfloat16", device="auto")
    info = handle.info
    placement = dict(info.placement)
    assert info.device == "cuda:0+cpu" and set(placement) == {"cuda:0", "cpu"}
    assert placement["cuda:0"] <= size // 2
    assert allocated() - baseline <= size // 2 + 4 * 2**20
    assert lm.generate("The import", model="g", max_new_tokens=8, manager=manager).stats.new_tokens
    manager.unload("g")
    assert allocated() == baseline


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_auto_spreads_over_two_gpus_under_a_budget(manager, baseline, gpu_model):
    size = lm.estimate(str(gpu_model), dtype="bfloat16", device="cuda:0").memory
    lm.budget(manager=manager, cuda0=int(0.7 * size), cuda1=int(0.7 * size))
    info = manager.load(str(gpu_model), name="g", dtype="bfloat16", device="auto").info
    assert info.device == "cuda:0+cuda:1"
    assert lm.generate("The import", model="g", max_new_tokens=4, manager=manager).text
