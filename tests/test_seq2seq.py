"""Encoder–decoder models (T5, BART, Marian): load, generate, stream, stop, token records,
branch, batch and score, each checked against plain transformers on tiny random models."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from _models import build_seq2seq

import llm_magic as lm
from llm_magic.errors import (
    InvalidOptionError,
    PromptTooLongError,
)

SOURCE = "def add(a, b): return a + b"


@pytest.fixture(scope="module")
def seq2seq(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("seq2seq")
    return {arch: build_seq2seq(root / arch, arch) for arch in ("t5", "bart", "marian")}


def _raw(backend, source: str, n: int) -> list[int]:
    """transformers' own greedy generate on the source, the decoder's start token dropped."""
    ids = backend.tokenizer(source, return_tensors="pt")
    with torch.inference_mode():
        out = backend.model.generate(**ids, do_sample=False, max_new_tokens=n, min_new_tokens=n)
    return out[0, 1:].tolist()


@pytest.fixture(params=["t5", "bart", "marian"])
def model(request, seq2seq, manager):
    arch = request.param
    manager.load(str(seq2seq[arch]), name=arch, dtype="float32")
    return arch


def test_load_reports_the_kind(model, manager):
    info = manager.info(model)
    assert info.kind == "seq2seq" and not info.chat
    assert "hf (seq2seq)" in str(manager.models())
    assert lm.estimate(str(manager.info(model).source), dtype="float32").memory > 0


def test_generation_equals_transformers_and_keeps_source_and_output_apart(model, manager):
    backend = manager.backend(model)
    gen = lm.generate(SOURCE, model=model, max_new_tokens=8, logprobs=3, manager=manager)
    ids = [r.id for r in gen.tokens]
    assert ids == _raw(backend, SOURCE, 8)[: len(ids)]
    assert list(gen.prompt_ids) == backend.tokenizer(SOURCE)["input_ids"]
    assert gen.text == backend.tokenizer.decode(ids, skip_special_tokens=True)
    # each record's log-probability equals a teacher-forced forward of the output
    decoder = torch.tensor([[backend.model.config.decoder_start_token_id, *ids]])
    with torch.inference_mode():
        logits = backend.model(input_ids=torch.tensor([list(gen.prompt_ids)]),
                               decoder_input_ids=decoder).logits[0]
    expected = torch.log_softmax(logits.float(), -1)[torch.arange(len(ids)), ids]
    got = torch.tensor([r.logprob for r in gen.tokens])
    assert torch.allclose(got, expected, atol=1e-5)


def test_stream_stop_and_interrupt(model, manager):
    pieces: list[str] = []
    gen = lm.generate(SOURCE, model=model, max_new_tokens=10, stream=pieces.append,
                      manager=manager)
    assert "".join(pieces) == gen.text
    stop = threading.Event()
    calls = []

    def count(*_args):
        calls.append(1)
        if len(calls) == 3:
            stop.set()

    decoder = manager.backend(model).model.get_decoder()
    handle = decoder.register_forward_hook(count)
    try:
        cut = lm.generate(SOURCE, model=model, max_new_tokens=30, stop_event=stop,
                          manager=manager)
    finally:
        handle.remove()
    assert cut.interrupted and 0 < cut.stats.new_tokens < 30
    again = lm.generate(SOURCE, model=model, max_new_tokens=10, manager=manager)
    assert again.text == gen.text


def test_seeded_sampling_repeats_and_a_branch_continues_the_output(model, manager):
    a = lm.generate(SOURCE, model=model, max_new_tokens=6, temperature=1.0, seed=7,
                    manager=manager)
    b = lm.generate(SOURCE, model=model, max_new_tokens=6, temperature=1.0, seed=7,
                    manager=manager)
    assert a.text == b.text
    g = lm.generate(SOURCE, model=model, max_new_tokens=6, logprobs=3, manager=manager)
    alt = g.tokens[2].top[1][0]
    branch = g.branch(2, alt, manager=manager)
    assert [r.id for r in branch.tokens[:3]] == [g.tokens[0].id, g.tokens[1].id, alt]
    backend = manager.backend(model)
    decoder = [backend.model.config.decoder_start_token_id] + [r.id for r in branch.tokens]
    with torch.inference_mode():
        out = backend.model.generate(input_ids=torch.tensor([list(g.prompt_ids)]),
                                     decoder_input_ids=torch.tensor([decoder[:4]]),
                                     do_sample=False, max_new_tokens=3, min_new_tokens=3)
    assert out[0, 1:].tolist() == [r.id for r in branch.tokens]


def test_batch_rows_equal_single_generations(model, manager):
    sources = [SOURCE, "import os", "class Foo: pass"]
    rows = lm.generate_batch(sources, model=model, max_new_tokens=5, manager=manager)
    for source, row in zip(sources, rows, strict=True):
        single = lm.generate(source, model=model, max_new_tokens=5, manager=manager)
        assert row.text == single.text


def test_score_of_a_translation_is_its_teacher_forced_log_likelihood(model, manager):
    backend = manager.backend(model)
    target = "return a + b"
    s = lm.score(SOURCE, target=target, model=model, manager=manager)
    target_ids = backend.tokenizer(text_target=target)["input_ids"]
    decoder = [backend.model.config.decoder_start_token_id, *target_ids]
    with torch.inference_mode():
        logits = backend.model(input_ids=torch.tensor([backend.tokenizer(SOURCE)["input_ids"]]),
                               decoder_input_ids=torch.tensor([decoder])).logits[0]
    expected = torch.log_softmax(logits.float(), -1)[torch.arange(len(target_ids)),
                                                     target_ids].sum()
    assert abs(s.logprob - float(expected)) < 1e-4
    assert s.source == SOURCE and s.text == target and len(s.tokens) == len(target_ids)
    with pytest.raises(InvalidOptionError, match="target="):
        lm.score(SOURCE, model=model, manager=manager)


def test_score_target_on_a_causal_model_scores_only_the_continuation(manager, tiny_gpt2):
    manager.load(str(tiny_gpt2), name="causal", dtype="float32")
    whole = lm.score("def f(x): return x", model="causal", manager=manager)
    tail = lm.score("def f(x):", target=" return x", model="causal", manager=manager)
    n = len(tail.tokens)
    assert [r.id for r in tail.tokens] == [r.id for r in whole.tokens[-n:]]
    assert abs(tail.logprob - sum(r.logprob for r in whole.tokens[-n:])) < 1e-5


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(system="Be brief."), InvalidOptionError, "system prompt does not apply"),
    (dict(chat=True), InvalidOptionError, "Chat templates do not apply"),
    (dict(target_lang="fr_XX"), InvalidOptionError, "not a language code"),
])
def test_causal_only_options_are_refused(model, manager, kwargs, error, match):
    with pytest.raises(error, match=match):
        lm.generate(SOURCE, model=model, max_new_tokens=3, manager=manager, **kwargs)


def test_the_reverse_and_the_limits(model, manager, tiny_gpt2):
    manager.load(str(tiny_gpt2), name="causal", dtype="float32")
    with pytest.raises(InvalidOptionError, match="target_lang applies to translation"):
        lm.generate("x", model="causal", target_lang="fr_XX", manager=manager)
    with pytest.raises(InvalidOptionError, match="empty|blank"):
        lm.generate("   ", model=model, manager=manager)
    with pytest.raises(PromptTooLongError, match="encoder of .* reads at most 64"):
        lm.generate("word " * 200, model=model, max_new_tokens=3, manager=manager)
    with pytest.raises(InvalidOptionError, match="encoder–decoder model: its attention needs"):
        lm.attention(SOURCE, model=model, manager=manager)
