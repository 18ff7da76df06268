"""Quantized loading: int8 and int4 weights (torchao), counted before loading, quality measured.

On the bundled demo (a trained GPT-2, whose Conv1D layers quantize too) and tiny random
GPT-2 and Llama models: the layers really are quantized, the outputs stay close to
float32, the estimate matches the measured size, every analysis runs on a quantized
model, unload frees it, and bad input is refused in one line.
"""

from __future__ import annotations

import _thread
import gc
import json
import shutil
import threading
import weakref

import pytest
import torch
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import llm_magic as lm
from llm_magic.analysis import attention, compare, logit_lens, quality, score
from llm_magic.backends import _quantize
from llm_magic.errors import (
    BudgetExceededError,
    InvalidOptionError,
    MissingDependencyError,
    ModelConflictError,
    NotAvailableError,
)
from llm_magic.generation import generate, generate_batch
from llm_magic.resources.estimate import INT4_GROUP, layer_shape, quantizable_layers

PROMPT = "The import statement"
#: Python's own documentation, which the demo was trained on: two windows within its context.
TEXT = ("The \"import\" statement is used to import a module and bind a name in the local "
        "namespace. The basic import statement (no \"from\" clause) is executed in two steps: "
        "find a module, loading and initializing it if necessary; define a name or names in "
        "the local namespace for the scope where the \"import\" statement occurs. The \"for\" "
        "statement is used to iterate over the elements of a sequence (such as a string, tuple "
        "or list) or other iterable object. The expression list is evaluated once; it should "
        "yield an iterable object. An iterator is created for the result of that iterable.")


def _layers(manager, name):
    model = manager.backend(name).memory_owner()
    return model, quantizable_layers(model)


# -- the layers really are quantized ---------------------------------------------------


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_int8_stores_each_linear_layer_in_a_byte_per_weight(request, manager, fixture):
    path = request.getfixturevalue(fixture)
    full = manager.load(str(path), name="full").info
    info = manager.load(str(path), quantize="int8").info
    assert info.name == f"{path.name}-int8" and info.quantization == "int8"
    model, layers = _layers(manager, info.name)
    assert layers and not any(type(m).__name__ == "Conv1D" for m in model.modules())
    for _, layer in layers:
        w = layer.weight
        out_features, in_features = layer_shape(layer)
        assert type(w).__name__ == "Int8Tensor" and w.qdata.dtype == torch.int8
        assert _quantize.tensor_bytes(w) == out_features * in_features + 5 * out_features
    head = model.get_output_embeddings().weight
    assert type(head) is torch.nn.Parameter and head.dtype == torch.float32  # left as it was
    assert info.memory == _quantize.footprint(model) < full.memory
    assert info.saved == full.memory - info.memory and info.parameters == full.parameters


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_int4_packs_two_weights_a_byte_in_groups(request, manager, fixture):
    path = request.getfixturevalue(fixture)
    info = manager.load(str(path), quantize="int4").info
    model, left = _layers(manager, info.name)
    layers = [m for m in model.modules() if isinstance(m, _quantize.Int4Linear)]
    per_block = 4 if fixture == "tiny_gpt2" else 7  # attention and MLP projections
    assert info.quantization == "int4" and len(layers) == 2 * per_block and left == []
    for layer in layers:
        width = layer.in_features + layer.pad
        assert width % INT4_GROUP == 0 and layer.pad < INT4_GROUP
        qdata, scales = layer.weight.qdata, layer.weight.scale_and_zero
        assert qdata.dtype == torch.uint8 and qdata.numel() == layer.out_features * width // 2
        assert scales.dtype == torch.bfloat16
        assert scales.numel() == width // INT4_GROUP * layer.out_features * 2


def test_gpt2_conv1d_becomes_linear_exactly(tiny_gpt2):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()
    ids = torch.arange(40).reshape(1, -1)
    with torch.inference_mode():
        before = model(ids).logits
    assert _quantize._linear_from_conv1d(model) == 8  # 4 per block, 2 blocks
    assert not any(type(m).__name__ == "Conv1D" for m in model.modules())
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, before)


# -- close to float32, on the trained demo ----------------------------------------------


@pytest.mark.parametrize(("scheme", "agreement", "mean_kl"), [("int8", 0.97, 0.005),
                                                               ("int4", 0.90, 0.05)])
def test_demo_quantized_stays_close_to_float32(manager, scheme, agreement, mean_kl):
    manager.load("demo")
    manager.load("demo", quantize=scheme)
    report = quality(f"demo-{scheme}", against="demo", text=TEXT, manager=manager)
    assert report.predicted > 100 and not report.loaded_reference
    # The bounds this test states (benchmarks/quantize.py measures the targets on
    # more text): agreement of the likeliest token, and KL in nats.
    assert report.agreement >= agreement and report.mean_kl <= mean_kl
    assert abs(report.perplexity / report.reference_perplexity - 1) < 0.1
    text = str(report)
    assert "top-1 agreement" in text and "nats" in text and "perplexity" in text


# -- counted before loading ---------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("source", ["demo", "tiny_gpt2", "tiny_llama"])
def test_the_estimate_is_within_ten_percent_of_the_measured_size(request, manager, source,
                                                                 scheme):
    path = source if source == "demo" else str(request.getfixturevalue(source))
    estimate = lm.estimate(path, quantize=scheme)
    assert estimate.quantize == scheme and f"{scheme} weights" in str(estimate)
    info = manager.load(path, quantize=scheme).info
    assert info.estimate == estimate.memory
    assert abs(estimate.memory - info.memory) <= 0.1 * info.memory


def test_the_budget_counts_the_quantized_size(manager):
    full = lm.estimate("demo").memory
    small = lm.estimate("demo", quantize="int8").memory
    lm.budget(manager=manager, cpu=(full + small) // 2)
    try:
        with pytest.raises(BudgetExceededError):
            manager.load("demo")
        assert manager.load("demo", quantize="int8").info.memory == small
        # the int4 copy fits only when the idle int8 one leaves
        with pytest.warns(lm.LLMMagicWarning, match="Evicted 'demo-int8'"):
            manager.load("demo", quantize="int4")
        assert manager.names() == ["demo-int4"]
    finally:
        lm.budget(manager=manager, cpu=None)


# -- everything else works on a quantized model ------------------------------------------


@pytest.fixture
def llama8(manager, tiny_llama):
    return manager.load(str(tiny_llama), name="llama8", quantize="int8")


@pytest.fixture
def gpt4(manager, tiny_gpt2):
    return manager.load(str(tiny_gpt2), name="gpt4", quantize="int4")


@pytest.mark.parametrize("fixture", ["llama8", "gpt4"])
def test_streaming_batch_and_records_on_a_quantized_model(request, manager, fixture):
    name = request.getfixturevalue(fixture).name
    pieces: list[str] = []
    streamed = generate(PROMPT, model=name, max_new_tokens=12, chat=False, stream=pieces.append,
                        logprobs=3, manager=manager)
    plain = generate(PROMPT, model=name, max_new_tokens=12, chat=False, manager=manager)
    assert streamed.text == plain.text == "".join(pieces)
    assert len(streamed.tokens) == streamed.stats.new_tokens
    assert all(r.rank == 1 for r in streamed.tokens)  # greedy: the likeliest every time
    prompts = ["Hello", PROMPT, "A"]
    batch = generate_batch(prompts, model=name, max_new_tokens=6, chat=False, manager=manager)
    singles = [generate(p, model=name, max_new_tokens=6, chat=False, manager=manager)
               for p in prompts]
    assert [g.text for g in batch] == [g.text for g in singles]
    alternative = streamed.tokens[1].top[1][0]
    branched = streamed.branch(1, alternative, manager=manager)
    assert branched.parent == streamed.id and branched.branch_at == 1 and branched.tokens


@pytest.mark.parametrize("fixture", ["llama8", "gpt4"])
def test_score_attention_and_lens_on_a_quantized_model(request, manager, fixture):
    name = request.getfixturevalue(fixture).name
    text = TEXT[:160]
    scores = score(text, model=name, manager=manager)
    assert scores.tokens and scores.perplexity > 1
    amap = attention(text, model=name, manager=manager)
    assert amap.shape[0] == 2 and amap.shape[2] == len(scores.ids)
    lens = logit_lens(text, model=name, manager=manager)
    assert lens.shape[1] == len(scores.ids)  # exact: its last row reproduced the logits


def test_compare_cross_scores_float32_against_int4(manager):
    manager.load("demo")
    manager.load("demo", quantize="int4")
    c = compare(PROMPT, models=["demo", "demo-int4"], max_new_tokens=8, stream=False,
                manager=manager)
    assert len(c) == 2 and c.against(1) is not None


def test_interrupt_stops_a_quantized_model_and_keeps_it_usable(manager, tmp_path_factory):
    from _models import build_tiny_model

    out = build_tiny_model(tmp_path_factory.mktemp("long8"), arch="llama", context=8192)
    for file in ("config.json", "generation_config.json"):
        config = json.loads((out / file).read_text())
        config["eos_token_id"] = 10**6  # never emitted: it runs until stopped
        (out / file).write_text(json.dumps(config))
    name = manager.load(str(out), quantize="int8").name
    timer = threading.Timer(0.6, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            generate("Hello", model=name, max_new_tokens=6000, manager=manager)
    finally:
        timer.cancel()
    partial = manager.last_generation
    assert partial.interrupted and 0 < partial.stats.new_tokens < 6000
    assert generate("Hello", model=name, max_new_tokens=3, manager=manager).stats.new_tokens == 3


def test_unload_frees_a_quantized_model(manager, tiny_llama):
    handle = manager.load(str(tiny_llama), quantize="int4")
    model = weakref.ref(handle.model)
    layer = weakref.ref(next(m for m in handle.model.modules()
                             if isinstance(m, _quantize.Int4Linear)).weight)
    memory = handle.info.memory
    report = handle.unload()
    gc.collect()
    assert report.freed and model() is None and layer() is None
    assert report.memory == memory and manager.names() == []


def test_gradients_through_int4_weights_are_refused_and_flow_through_int8(manager, tiny_llama):
    for scheme in ("int8", "int4"):
        model = manager.load(str(tiny_llama), quantize=scheme).model
        embeds = model.get_input_embeddings()(torch.tensor([[1, 2, 3]])).detach()
        embeds.requires_grad_(True)
        if scheme == "int8":
            model(inputs_embeds=embeds).logits.sum().backward()
            assert embeds.grad is not None and embeds.grad.abs().sum() > 0
        else:
            with pytest.raises(NotAvailableError, match="Gradients do not flow through int4"):
                model(inputs_embeds=embeds)
        del model


# -- quality: the reference is loaded only where the budget allows ------------------------


def test_quality_loads_the_reference_only_when_it_fits(manager):
    manager.load("demo", quantize="int8")
    report = quality("demo-int8", against="demo", text=TEXT, manager=manager)
    assert report.loaded_reference and "unloaded after" in str(report)
    assert manager.names() == ["demo-int8"]
    quantized, full = manager.info("demo-int8").memory, lm.estimate("demo").memory
    try:
        lm.budget(manager=manager, cpu=quantized + 1_000_000)  # no room, even evicting
        with pytest.raises(BudgetExceededError, match="no room for it.*so it was not loaded"):
            quality("demo-int8", against="demo", text=TEXT, manager=manager)
        lm.budget(manager=manager, cpu=full + quantized // 2)  # room only by evicting
        with pytest.raises(BudgetExceededError, match="would evict 'demo-int8', so it was not"):
            quality("demo-int8", against="demo", text=TEXT, manager=manager)
    finally:
        lm.budget(manager=manager, cpu=None)
    assert manager.names() == ["demo-int8"]
    with pytest.raises(InvalidOptionError, match="the model itself"):
        quality("demo-int8", against="demo-int8", text=TEXT, manager=manager)


def test_quality_refuses_models_with_other_tokenizers(manager, tiny_gpt2):
    manager.load("demo", quantize="int8")
    manager.load(str(tiny_gpt2), name="other")
    with pytest.raises(InvalidOptionError, match="tokenize the text differently"):
        quality("demo-int8", against="other", text=TEXT, manager=manager)


# -- what lm.models(), the load summary and %llm list show ---------------------------------


@pytest.fixture
def ip():
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "llm_magic")
    yield shell
    manager = lm.get_manager()
    for name in manager.names():
        manager.unload(name)
    shell.run_line_magic("unload_ext", "llm_magic")


def test_load_magic_quantizes_and_the_summary_offers_quality(ip, capsys):
    ip.run_line_magic("llm", "load demo --quantize int8")
    out = capsys.readouterr().out
    assert "Loaded 'demo-int8'" in out and "int8 weights" in out and "saved" in out
    assert "lm.quality('demo-int8', against='demo', text=...)" in out
    ip.run_line_magic("llm", "list")
    table = capsys.readouterr().out
    assert "quantized" in table and "int8 (saved" in table
    assert "int8 weights" in repr(lm.load("demo", quantize="int8"))


# -- bad input, refused in one line --------------------------------------------------------


@pytest.mark.parametrize("value", ["int3", "fp8", 8, True])
def test_an_unknown_scheme_is_refused(manager, value):
    with pytest.raises(InvalidOptionError, match="Unknown quantize=.*'int8'.*'int4'"):
        manager.load("demo", quantize=value)
    assert manager.names() == []


def test_the_magic_refuses_an_unknown_scheme_in_one_line(ip):
    with pytest.raises(UsageError, match="Unknown quantize='int3'"):
        ip.run_line_magic("llm", "load demo --quantize int3")
    assert lm.get_manager().names() == []


def test_a_served_model_cannot_be_quantized(manager, ip):
    url = "http://127.0.0.1:9/v1"  # nothing listens: the refusal comes before any request
    with pytest.raises(InvalidOptionError, match="loaded in this kernel.*chose its own weights"):
        manager.load(url, quantize="int8")
    with pytest.raises(UsageError, match="chose its own weights"):
        ip.run_line_magic("llm", f"load {url} --quantize int4")


def test_without_torchao_the_load_says_what_to_install(manager, monkeypatch):
    real = _quantize.importlib.util.find_spec
    monkeypatch.setattr(_quantize.importlib.util, "find_spec",
                        lambda name, *a: None if name == "torchao" else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r"llm_magic\[quant\]"):
        manager.load("demo", quantize="int4")
    assert manager.names() == []


def test_an_already_quantized_checkpoint_is_refused_before_anything_is_evicted(
        manager, tiny_llama, tmp_path):
    saved = tmp_path / "gptq"
    shutil.copytree(tiny_llama, saved)
    config = json.loads((saved / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (saved / "config.json").write_text(json.dumps(config))
    manager.load("demo")
    lm.budget(manager=manager, cpu=manager.info("demo").memory + 1000)
    try:
        with pytest.raises(InvalidOptionError, match=r"already quantized \(gptq\).*without quan"):
            manager.load(str(saved), quantize="int8")
    finally:
        lm.budget(manager=manager, cpu=None)
    assert manager.names() == ["demo"]


def test_a_name_keeps_its_quantization(manager):
    manager.load("demo", name="x", quantize="int8")
    assert manager.load("demo", name="x", quantize="int8").name == "x"  # resident
    with pytest.raises(ModelConflictError, match=r"already loaded from .*\(revision None, int8 "
                                                  r"weights, float32, cpu\)"):
        manager.load("demo", name="x")
