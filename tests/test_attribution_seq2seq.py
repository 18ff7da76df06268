"""lm.attribute on encoder–decoder models: the source and the decoder's input as the inputs.

On tiny random T5, BART and Marian (one with scaled embeddings, as real Marian
checkpoints have) every score is compared with plain autograd written here on
the model's own ``inputs_embeds``/``decoder_inputs_embeds``, every f with the
model's teacher-forced log-softmax on ids; occlusion with runs the test makes
itself. The demo translator's occlusion rows show its alignment; a cell, the
"why?" panel and an int8 model go through the same path.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _models import build_seq2seq
from IPython.core.interactiveshell import InteractiveShell

import llm_magic as lm
from llm_magic.errors import InvalidOptionError, NotAvailableError, PromptTooLongError
from llm_magic.manager import ModelManager
from llm_magic.widgets.tokens import TokensWidget

SOURCE = "def add(a, b):"
OUTPUT = " return a"
ARCHS = ("t5", "bart", "marian", "marian-scaled")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("attr-s2s")
    m = ModelManager()
    for arch in ARCHS[:3]:
        m.load(str(build_seq2seq(root / arch, arch)), name=arch, dtype="float32")
    scaled = build_seq2seq(root / "scaled", "marian", scale_embedding=True)
    m.load(str(scaled), name="marian-scaled", dtype="float32")
    yield m
    for name in m.names():
        m.unload(name)


def _parts(m: ModelManager, name: str, source: str, output: str | list[int]):
    """(model, source ids, decoder ids = start + output ids) as transformers tokenizes them."""
    backend = m.backend(name)
    tok, model = backend.tokenizer, backend.model
    src = tok(source)["input_ids"]
    out = tok(text_target=output)["input_ids"] if isinstance(output, str) else list(output)
    return model, src, [model.config.decoder_start_token_id, *out]


def _embeds(model, src: list[int], dec: list[int]):
    """What the encoder and the decoder take as embeddings: Marian scales the source's only
    when it embeds ids itself, so a caller passing embeddings scales them."""
    scale = math.sqrt(model.config.d_model) if getattr(model.config, "scale_embedding",
                                                       False) else 1.0
    if model.config.model_type != "marian":
        scale = 1.0  # BART's embedding module scales itself; T5 does not scale
    e = model.get_encoder().get_input_embeddings()(torch.tensor([src])) * scale
    d = model.get_decoder().get_input_embeddings()(torch.tensor([dec]))
    return e.detach(), d.detach()


def _f(model, e, d, k: int, token: int, other: int | None = None):
    logits = model(inputs_embeds=e, decoder_inputs_embeds=d, use_cache=False).logits
    lp = torch.log_softmax(logits[0, k].float(), dim=-1)
    return lp[token] - (lp[other] if other is not None else 0)


def _by_hand(model, src, dec, k, method):
    """Row for the output token at decoder position k + 1, by autograd: [source ; decoder]."""
    e, d = _embeds(model, src, dec[: k + 1])
    e, d = e.clone().requires_grad_(True), d.clone().requires_grad_(True)
    f = _f(model, e, d, k, dec[k + 1])
    ge, gd = torch.autograd.grad(f, [e, d])
    if method == "saliency":
        row = torch.cat([ge[0].norm(dim=-1), gd[0].norm(dim=-1)])
    else:
        row = torch.cat([(e[0] * ge[0]).sum(-1), (d[0] * gd[0]).sum(-1)])
    return row.detach().numpy(), float(f.detach())


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("method", ["saliency", "input_x_gradient"])
def test_gradient_rows_equal_autograd_on_the_models_own_embeddings(models, name, method):
    model, src, dec = _parts(models, name, SOURCE, OUTPUT)
    a = lm.attribute(SOURCE, model=name, output=OUTPUT, method=method, manager=models)
    S = len(src)
    assert a.source_tokens == S and a.prompt_tokens == S + 1
    assert list(a.input_ids) == [*src, *dec[:-1]]  # the last output token is no input
    assert list(a.target_ids) == dec[1:] and a.scores.shape == (len(dec) - 1, len(src + dec) - 1)
    with torch.no_grad():  # f is the model's teacher-forced log-probability on ids
        lp = torch.log_softmax(model(input_ids=torch.tensor([src]),
                                     decoder_input_ids=torch.tensor([dec])).logits[0].float(), -1)
    for k in range(len(dec) - 1):
        want, f = _by_hand(model, src, dec, k, method)
        got = a.scores[k]
        np.testing.assert_allclose(got[: S + k + 1], want, atol=2e-6, rtol=1e-4)
        assert np.isnan(got[S + k + 1:]).all()  # the output token itself and after: no input
        assert math.isclose(a.value[k], f, rel_tol=1e-5, abs_tol=1e-6)
        assert math.isclose(a.value[k], float(lp[k, dec[k + 1]]), rel_tol=1e-5, abs_tol=1e-5)


@pytest.mark.parametrize("name", ["bart", "marian-scaled"])
def test_integrated_gradients_and_occlusion_against_their_definitions(models, name):
    model, src, dec = _parts(models, name, SOURCE, OUTPUT)
    S, k = len(src), 1
    ig = lm.attribute(SOURCE, model=name, output=OUTPUT, positions=k, steps=64,
                      method="integrated_gradients", manager=models)
    e, d = _embeds(model, src, dec[: k + 1])
    with torch.no_grad():
        at_x = float(_f(model, e, d, k, dec[k + 1]))
        at_0 = float(_f(model, torch.zeros_like(e), torch.zeros_like(d), k, dec[k + 1]))
    gap = at_x - at_0
    error = abs(float(np.nansum(ig.scores[0].astype(np.float64))) - gap) / abs(gap)
    assert math.isclose(float(ig.completeness[0]), error, rel_tol=1e-3, abs_tol=1e-6)
    assert math.isclose(float(ig.value[0]), at_x, rel_tol=1e-5, abs_tol=1e-6)
    assert math.isclose(float(ig.baseline_value[0]), at_0, rel_tol=1e-5, abs_tol=1e-6)
    occ = lm.attribute(SOURCE, model=name, output=OUTPUT, positions=k, method="occlusion",
                       manager=models)
    for j in (0, S - 1, S, S + 1):  # first and last source token, the start token, an output
        e2, d2 = e.clone(), d.clone()
        if j < S:
            e2[0, j] = 0
        else:
            d2[0, j - S] = 0
        with torch.no_grad():
            want = at_x - float(_f(model, e2, d2, k, dec[k + 1]))
        assert math.isclose(float(occ.scores[0, j]), want, rel_tol=1e-4, abs_tol=1e-5)


@pytest.mark.parametrize("name", ARCHS[:3])
def test_a_generation_is_attributed_on_the_ids_it_chose(models, name):
    g = lm.generate(SOURCE, model=name, max_new_tokens=4, logprobs=2, manager=models)
    a = lm.attribute(g, manager=models)
    model, src, _ = _parts(models, name, SOURCE, [])
    chosen = [r.id for r in g.tokens]
    assert list(g.prompt_ids) == src and a.source_tokens == len(src)
    assert list(a.target_ids) == chosen and a.prompt_tokens == len(src) + 1
    assert list(a.input_ids) == [*src, model.config.decoder_start_token_id, *chosen[:-1]]
    np.testing.assert_allclose(a.value, [r.logprob for r in g.tokens], atol=1e-4)
    # A text alone: its first output token, the likeliest (the raw argmax: these models'
    # generation config suppresses end-of-text, the attribution reads the model itself).
    first = lm.attribute(SOURCE, model=name, manager=models)
    with torch.no_grad():
        start = torch.tensor([[model.config.decoder_start_token_id]])
        top = int(model(input_ids=torch.tensor([src]), decoder_input_ids=start).logits[0, 0]
                  .argmax())
    assert first.target_ids == (top,) and first.scores.shape == (1, len(src) + 1)
    # A contrast of the second token against the runner-up.
    other = next(i for i, _, _ in g.tokens[1].top if i != chosen[1])
    c = lm.attribute(g, positions=1, contrast=(chosen[1], other), manager=models)
    assert math.isclose(float(c.value[0]), g.tokens[1].logprob - dict(
        (i, lp) for i, _, lp in g.tokens[1].top)[other], abs_tol=1e-4)
    assert "source" in a.to_html() and "decoder input" in a.to_html()


def test_the_translator_attributes_each_field_to_its_source_words(manager):
    """Occlusion: a month's digit comes from the month's name, the year's last digit from the
    year's last digit (the largest effect among the source's tokens, end-of-text aside)."""
    manager.load("demo-translator", name="tr")
    for source, month in (("the third of March, 2021", " march"),
                          ("12 August 1999", " august"), ("the 5th of june 2011", " june")):
        g = lm.generate(source, model="tr", logprobs=1, manager=manager)
        a = lm.attribute(g, method="occlusion", manager=manager)
        S = a.source_tokens
        words = list(a.input_tokens[:S])
        end = words.index("</s>")

        strongest = np.abs(a.scores[:, :S])
        strongest[:, end] = -1
        assert g.text[:4] == "".join(words[j].strip() for j in range(end - 4, end))
        assert words[int(np.argmax(strongest[6]))] == month, (source, g.text)  # "YYYY-M[M]"
        assert int(np.argmax(strongest[3])) == end - 1, (source, g.text)  # year's last digit


def test_a_cell_and_the_why_panel_attribute_a_translation():
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "llm_magic")
    manager = lm.get_manager()
    try:
        shell.run_line_magic("llm", "load demo-translator --as tr")
        shell.run_cell_magic("llm", "tr --attribute", "3/3/2021")
        g = shell.user_ns["_llm"]
        shell.run_line_magic("llm", "attribute --position 0")
        a = shell.user_ns["_llm_attribution"]
        assert a.target_ids == (g.tokens[0].id,) and a.source_tokens == len(g.prompt_ids)
        view = TokensWidget(g, manager=manager)
        assert view.explainable
        view.explain(2, wait=True)
        why = view.why
        assert view.error == "" and why["prompt_tokens"] == len(g.prompt_ids) + 1
        assert why["columns"] == len(g.prompt_ids) + 1 + 2
    finally:
        if manager.is_loaded("tr"):
            manager.unload("tr")
        manager.last_generation = None
        shell.run_line_magic("unload_ext", "llm_magic")
        for name in ("_llm", "_llm_attribution"):
            shell.user_ns.pop(name, None)


def test_an_int8_translator_is_attributed_through_its_quantized_weights(manager):
    manager.load("demo-translator", name="tr8", quantize="int8")
    g = lm.generate("March 3rd 21", model="tr8", logprobs=1, manager=manager)
    a = lm.attribute(g, positions=[0, -1], manager=manager)
    assert a.scores.shape[0] == 2 and np.isfinite(a.scores[0, : a.prompt_tokens]).all()
    assert any("int8" in note for note in a.notes)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(output=OUTPUT, positions=9), InvalidOptionError, "Output token 9 is not in the output"),
    (dict(positions=1), InvalidOptionError, "positions= picks output tokens"),
    (dict(output="   "), InvalidOptionError, "The output is empty"),
    (dict(output=[True]), InvalidOptionError, "output must be a text or a list"),
    (dict(output=OUTPUT * 40), PromptTooLongError, "decoder of 'bart' writes at most"),
    (dict(target_lang="xx_XX"), InvalidOptionError, "not a language code"),
    (dict(output=OUTPUT, target=" a"), InvalidOptionError, "single output token"),
])
def test_hostile_input_is_refused_in_one_line(models, kwargs, error, message):
    with pytest.raises(error, match=message) as info:
        lm.attribute(SOURCE, model="bart", manager=models, **kwargs)
    assert "\n" not in str(info.value)


def test_the_limits_and_the_wrong_kind(models, tiny_gpt2):
    with pytest.raises(PromptTooLongError, match="the encoder of 'bart' reads at most 64"):
        lm.attribute("x " * 80, model="bart", manager=models)
    g = lm.generate(SOURCE, model="bart", max_new_tokens=2, manager=models)
    with pytest.raises(InvalidOptionError, match="a Generation carries its own output"):
        lm.attribute(g, output="x", manager=models)
    models.load(str(tiny_gpt2), name="causal")
    try:
        with pytest.raises(InvalidOptionError, match="target_lang applies to translation"):
            lm.attribute(SOURCE, model="causal", target_lang="fr_XX", manager=models)
    finally:
        models.unload("causal")


def test_output_on_a_causal_model_is_teacher_forced_after_the_text(manager, tiny_gpt2):
    manager.load(str(tiny_gpt2), name="causal")
    backend = manager.backend("causal")
    head = backend.tokenizer(SOURCE)["input_ids"]
    tail = backend.tokenizer(OUTPUT, add_special_tokens=False)["input_ids"]
    a = lm.attribute(SOURCE, model="causal", output=OUTPUT, manager=manager)
    assert a.prompt_tokens == len(head) and a.source_tokens is None
    assert list(a.target_ids) == tail and list(a.input_ids) == [*head, *tail[:-1]]
    ids = [*head, *tail]
    model = backend.model
    for k in range(len(tail)):
        x = model.get_input_embeddings()(torch.tensor([ids[: len(head) + k]])).detach()
        x.requires_grad_(True)
        lp = torch.log_softmax(model(inputs_embeds=x).logits[0, -1].float(), -1)
        (grad,) = torch.autograd.grad(lp[tail[k]], x)
        np.testing.assert_allclose(a.scores[k, : len(head) + k],
                                   (x[0] * grad[0]).sum(-1).detach().numpy(),
                                   atol=2e-6, rtol=1e-4)


def test_a_model_whose_embeddings_do_not_reproduce_its_logits_is_refused(models, monkeypatch):
    from llm_magic.backends import _attribution_seq2seq

    monkeypatch.setattr(_attribution_seq2seq, "_encoder_scale", lambda model: [3.0])
    with pytest.raises(NotAvailableError, match="same logits on embeddings as on ids"):
        lm.attribute(SOURCE, model="t5", output=OUTPUT, manager=models)


def test_the_model_keeps_its_mode(models):
    model = models.backend("t5").model
    assert not model.training
    lm.attribute(SOURCE, model="t5", output=OUTPUT, manager=models)
    assert not model.training and all(p.requires_grad for p in model.parameters())


def test_the_completeness_warning_names_the_row_and_its_nats(models):
    """A relative error can be large on a row whose f barely moves from the baseline; the
    warning says which row and how many nats, as the result's own numbers give them."""
    with pytest.warns(lm.LLMMagicWarning, match="miss completeness by") as caught:
        a = lm.attribute(SOURCE, model="bart", output=OUTPUT, method="integrated_gradients",
                         steps=1, manager=models)
    row = int(np.argmax(a.completeness))
    gap = float(a.value[row] - a.baseline_value[row])
    off = abs(float(np.nansum(a.scores[row])) - gap)
    message = str(caught[0].message)
    assert f"output token {row}: {off:.3g} nats off" in message
    assert f"f(x) - f(baseline) = {gap:.3g} nats" in message and "\n" not in message
