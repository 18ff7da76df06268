"""The model manager: loading, sharing, naming, revisions, unloading."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from llm_magic.backends.base import GenerationRequest
from llm_magic.errors import (
    BackendError,
    InvalidOptionError,
    LLMMagicError,
    ModelConflictError,
    ModelNotFoundError,
    ModelNotLoadedError,
    NotAvailableError,
    ServerError,
)
from llm_magic.manager import ModelRef, ModelTable


def test_load_describes_the_model(manager, tiny_gpt2):
    handle = manager.load(str(tiny_gpt2), name="tiny")
    assert isinstance(handle, ModelRef) and handle.name == "tiny"
    info = handle.info
    assert (info.backend, info.device, info.dtype) == ("hf", "cpu", "float32")
    assert info.parameters == sum(p.numel() for p in handle.model.parameters())
    assert info.memory == handle.model.get_memory_footprint()
    assert info.context_length == 128 and info.chat is False
    assert info.architecture == "GPT2LMHeadModel"
    assert info.load_seconds > 0 and info.loaded_at > 0
    assert "tiny" in repr(handle) and "float32" in repr(handle)


def test_default_name_comes_from_the_directory(manager, tiny_gpt2):
    assert manager.load(str(tiny_gpt2)).name == tiny_gpt2.name


def test_loading_twice_keeps_one_copy(manager, tiny_gpt2):
    first = manager.load(str(tiny_gpt2), name="tiny")
    backend = manager.backend("tiny")
    loads: list = []
    stop = manager.events.subscribe(loads.append, kinds={"loading"})
    again = manager.load(str(tiny_gpt2), name="tiny")
    same_source_other_name = manager.load(str(tiny_gpt2), name="other")
    assert again == first and manager.backend("tiny") is backend
    assert same_source_other_name.name == "tiny"
    assert manager.names() == ["tiny"]
    stop()
    assert loads == [], "a resident model is returned without loading anything"
    # The name asked for reaches the one copy (a `%%llm other` cell, model="other").
    assert manager.is_loaded("other") and manager.resolve("other") == "tiny"
    assert manager.info("other").name == "tiny"
    manager.unload("tiny")
    assert not manager.is_loaded("other")


def test_same_name_other_settings_is_an_error_or_an_explicit_reload(manager, tiny_gpt2, tiny_llama):
    manager.load(str(tiny_gpt2), name="m")
    with pytest.raises(ModelConflictError, match="already loaded"):
        manager.load(str(tiny_llama), name="m")
    with pytest.raises(ModelConflictError):
        manager.load(str(tiny_gpt2), name="m", dtype="bfloat16")
    assert manager.info("m").architecture == "GPT2LMHeadModel"
    manager.load(str(tiny_gpt2), name="m", dtype="bfloat16", reload=True)
    assert manager.info("m").dtype == "bfloat16"
    assert manager.names() == ["m"]


def test_dtype_can_be_forced(manager, tiny_gpt2):
    f32 = manager.load(str(tiny_gpt2), name="f32").info
    bf16 = manager.load(str(tiny_gpt2), name="bf16", dtype="bf16").info
    assert bf16.dtype == "bfloat16" and bf16.memory == f32.memory // 2
    assert manager.load(str(tiny_gpt2), name="f32b", dtype="float32").name == "f32"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(dtype="int3"), InvalidOptionError, "Unknown dtype"),
        (dict(device="tpu"), InvalidOptionError, "Unknown device"),
        (dict(device="cuda"), NotAvailableError, "CUDA is not available"),
        (dict(name="has space"), InvalidOptionError, "not usable"),
        (dict(revision="main"), InvalidOptionError, "hub models"),
        (dict(trust_remote_code="yes"), InvalidOptionError, "True or False"),
    ],
)
def test_bad_load_options_register_nothing(manager, tiny_gpt2, kwargs, error, match):
    with pytest.raises(error, match=match):
        manager.load(str(tiny_gpt2), **kwargs)
    assert manager.names() == []


def test_bad_sources(manager, tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        manager.load(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="No model directory"):
        manager.load(str(tmp_path / "missing"))
    with pytest.raises(ModelNotFoundError, match="neither"):
        manager.load("not a model!")
    with pytest.raises(InvalidOptionError):
        manager.load("")
    with pytest.raises(ServerError, match="Cannot reach the model server"):
        manager.load("http://127.0.0.1:9/v1")  # served models: tests/test_openai_backend.py
    assert manager.names() == []


def test_hub_id_missing_offline_fails_fast_naming_the_fix(manager):
    t0 = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE") as info:
        manager.load("someone/never-downloaded")
    assert time.perf_counter() - t0 < 2
    assert "local directory" in str(info.value)
    assert manager.names() == []


def _cache_model(model_dir: Path, repo: str, commit: str, branch: str = "main") -> Path:
    """Lay out ``model_dir`` as the Hugging Face cache would hold a download of ``repo``."""
    from huggingface_hub import constants

    root = Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / commit
    if not snap.exists():
        shutil.copytree(model_dir, snap)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / branch).write_text(commit)
    return snap


def test_hub_id_from_the_cache_records_the_commit(manager, tiny_gpt2):
    commit = "a" * 40
    _cache_model(tiny_gpt2, "org/tiny-cached", commit)
    _cache_model(tiny_gpt2, "org/tiny-cached", "b" * 40, branch="v2")
    handle = manager.load("org/tiny-cached")
    assert handle.name == "tiny-cached"
    assert handle.info.commit == commit and handle.info.revision is None
    pinned = manager.load("org/tiny-cached", name="v2", revision="v2")
    assert pinned.info.commit == "b" * 40 and pinned.info.revision == "v2"
    by_commit = manager.load("org/tiny-cached", name="exact", revision=commit)
    assert by_commit.info.commit == commit
    with pytest.raises(ModelNotFoundError, match="revision 'v9'"):
        manager.load("org/tiny-cached", name="v9", revision="v9")
    assert sorted(manager.names()) == ["exact", "tiny-cached", "v2"]
    table = str(manager.models())
    assert "aaaaaaaaaa" in table and "bbbbbbbbbb" in table


def test_remote_code_needs_consent(manager, tiny_gpt2, tmp_path):
    custom = tmp_path / "custom"
    shutil.copytree(tiny_gpt2, custom)
    config = json.loads((custom / "config.json").read_text())
    config["model_type"] = "custom_gpt2"
    config["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig"}
    (custom / "config.json").write_text(json.dumps(config))
    (custom / "configuration_custom.py").write_text(
        "from transformers import GPT2Config\n\n"
        "class CustomConfig(GPT2Config):\n    model_type = 'custom_gpt2'\n"
    )
    with pytest.raises(BackendError, match="trust_remote_code=True"):
        manager.load(str(custom))
    assert manager.names() == []


def test_an_encoder_loads_for_attention_only(manager, tmp_path):
    from _models import build_tokenizer
    from transformers import BertConfig, BertModel

    build_tokenizer(tmp_path)
    BertModel(BertConfig(vocab_size=512, hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path)
    manager.load(str(tmp_path), name="bert")
    backend = manager.backend("bert")
    with pytest.raises(NotAvailableError, match="is an encoder .*cannot generate"):
        backend.prepare(GenerationRequest("Hello", 4), threading.Event())


def test_default_model_follows_loads_and_use(manager, tiny_gpt2, tiny_llama):
    with pytest.raises(ModelNotLoadedError, match="No model is loaded"):
        manager.resolve(None)
    manager.load(str(tiny_gpt2), name="a")
    manager.load(str(tiny_llama), name="b")
    assert manager.resolve(None) == "b"
    manager.use("a")
    assert manager.resolve(None) == "a"
    manager.unload("a")
    assert manager.resolve(None) == "b"
    with pytest.raises(ModelNotLoadedError, match="Load it with"):
        manager.use("a")


def test_models_table_renders_text_and_escaped_html(manager, tiny_gpt2, tmp_path):
    assert "No models loaded" in str(manager.models())
    odd = tmp_path / "<b>odd"
    shutil.copytree(tiny_gpt2, odd)
    manager.load(str(odd), name="odd")
    table = manager.models()
    assert isinstance(table, ModelTable) and table[0].name == "odd"
    html = table._repr_html_()
    assert "&lt;b&gt;odd" in html and "<b>odd" not in html
    assert "odd" in str(table) and "float32" in str(table)


def test_unload_frees_and_verifies(manager, tiny_gpt2):
    handle = manager.load(str(tiny_gpt2), name="tiny")
    report = manager.unload("tiny")[0]
    assert report.freed and report.holders == () and report.memory > 0
    assert "freed" in report.message
    assert not handle.loaded and "not loaded" in repr(handle)
    with pytest.raises(ModelNotLoadedError):
        _ = handle.info
    with pytest.raises(ModelNotLoadedError, match="'tiny' is not loaded"):
        manager.unload("tiny")


def test_unload_says_who_still_holds_the_model(manager, tiny_gpt2):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    handle = manager.load(str(tiny_gpt2), name="tiny")
    shell.user_ns["raw"] = handle.model
    try:
        report = manager.unload("tiny")[0]
        assert not report.freed
        assert any("`raw`" in h for h in report.holders)
        assert "still held by" in report.message and "del raw" in report.message
    finally:
        del shell.user_ns["raw"]
    assert manager.names() == []


def test_unload_all(manager, tiny_gpt2, tiny_llama):
    manager.load(str(tiny_gpt2), name="a")
    manager.load(str(tiny_llama), name="b")
    reports = manager.unload(all=True)
    assert sorted(r.name for r in reports) == ["a", "b"] and all(r.freed for r in reports)
    with pytest.raises(InvalidOptionError):
        manager.unload()


def test_unload_refuses_while_generating(manager, tiny_gpt2):
    manager.load(str(tiny_gpt2), name="tiny")
    with manager.checkout("tiny"):
        with pytest.raises(LLMMagicError, match="is generating"):
            manager.unload("tiny")
        assert manager.info("tiny").generating
    assert manager.unload("tiny")[0].freed


def test_events_tell_panels_what_happened(manager, tiny_gpt2):
    seen: list[tuple[str, str | None]] = []
    stop = manager.events.subscribe(lambda e: seen.append((e.kind, e.model)))
    manager.load(str(tiny_gpt2), name="tiny")
    manager.backend("tiny")
    from llm_magic.generation import generate

    generate("Hi", max_new_tokens=2, manager=manager)
    manager.unload("tiny")
    stop()
    kinds = [k for k, _ in seen]
    assert kinds == ["loading", "loaded", "generation_start", "generation_end", "unloaded"]
    assert all(m == "tiny" for _, m in seen)


def test_a_failing_listener_does_not_break_loading(manager, tiny_gpt2):
    def broken(event):
        raise RuntimeError("panel bug")

    manager.events.subscribe(broken)
    assert manager.load(str(tiny_gpt2), name="tiny").loaded


def test_the_demo_model_loads_offline_and_speaks_english(manager):
    from llm_magic.demo import MODEL_DIR

    if not (MODEL_DIR / "model.safetensors").exists():
        pytest.fail("the bundled demo model is missing")
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    demo = manager.load("demo")
    assert demo.name == "demo" and demo.info.source == "demo"
    from llm_magic.generation import generate

    text = generate("The import statement", max_new_tokens=30, manager=manager).text
    words = [w.strip(".,;:()'\"") for w in text.split()]
    assert len(words) >= 8
    assert sum(w.isalpha() for w in words) / len(words) > 0.6
