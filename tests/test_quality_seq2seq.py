"""lm.quality on encoder–decoders: an int8 translator's output distributions against the
float32 one's, teacher-forced over a given translation, checked by hand here."""

from __future__ import annotations

import math

import pytest
import torch

import llm_magic as lm
from llm_magic.errors import InvalidOptionError, PromptTooLongError

SOURCE = "the third of March, 2021"
TARGET = "2021-03-03"


@pytest.fixture
def translators(manager):
    manager.load("demo-translator", name="tr")
    manager.load("demo-translator", name="tr8", quantize="int8")
    return manager


def _lp(model, src: list[int], dec: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([dec])).logits
    return torch.log_softmax(logits[0, :-1].float(), -1)


def test_an_int8_translator_against_its_float32_reference(translators):
    report = lm.quality("tr8", against="tr", text=SOURCE, target=TARGET, manager=translators)
    ref, own = translators.backend("tr"), translators.backend("tr8")
    src = ref.tokenizer(SOURCE)["input_ids"]
    dec = [ref.model.config.decoder_start_token_id, *ref.tokenizer(text_target=TARGET)[
        "input_ids"]]
    assert report.tokens == tuple(ref.tokenizer.convert_ids_to_tokens(dec))
    a, b = _lp(own.model, src, dec), _lp(ref.model, src, dec)
    kl = (b.exp() * (b - a)).sum(-1).clamp_min(0)
    want = torch.tensor(dec[1:])
    assert report.predicted == len(dec) - 1
    for i in range(report.predicted):
        assert math.isclose(report.kl[i], float(kl[i]), rel_tol=1e-4, abs_tol=1e-7)
        assert report.agree[i] == bool(a[i].argmax() == b[i].argmax())
        assert math.isclose(report.logprob[i], float(a[i, want[i]]), abs_tol=1e-5)
        assert math.isclose(report.reference_logprob[i], float(b[i, want[i]]), abs_tol=1e-5)
    assert report.agreement == 1.0 and report.mean_kl < 0.05  # int8 keeps the translation


def test_what_an_encoder_decoder_comparison_needs(translators, tiny_gpt2):
    with pytest.raises(InvalidOptionError, match="Pass target="):
        lm.quality("tr8", against="tr", text=SOURCE, manager=translators)
    with pytest.raises(InvalidOptionError, match="The target is empty"):
        lm.quality("tr8", against="tr", text=SOURCE, target="  ", manager=translators)
    with pytest.raises(PromptTooLongError, match="writes at most"):
        lm.quality("tr8", against="tr", text=SOURCE, target="2021-03-03 " * 20,
                   manager=translators)
    translators.load(str(tiny_gpt2), name="causal")
    with pytest.raises(InvalidOptionError, match="not both encoder–decoders"):
        lm.quality("tr8", against="causal", text=SOURCE, target=TARGET, manager=translators)
    translators.load(str(tiny_gpt2), name="causal8", quantize="int8")
    with pytest.raises(InvalidOptionError, match="append it to the text"):
        lm.quality("causal8", against="causal", text=SOURCE, target=TARGET,
                   manager=translators)
