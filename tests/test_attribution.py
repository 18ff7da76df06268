"""lm.attribute: each method against plain torch autograd on the same tiny models."""

from __future__ import annotations

import dataclasses
import math
import re
import warnings

import numpy as np
import pytest
import torch

from llm_magic.analysis.attribution import Attribution, attribute
from llm_magic.common.heatmap import ink
from llm_magic.errors import InvalidOptionError, LLMMagicWarning, NotAvailableError
from llm_magic.generation import generate

TEXT = "The import statement binds a name"
ATOL = 2e-6


@pytest.fixture(params=["tiny_gpt2", "tiny_llama"])
def tiny(request, manager):
    """A tiny GPT-2 or Llama (float32) loaded in a fresh manager: (manager, name)."""
    name = request.param.replace("tiny_", "")
    manager.load(str(request.getfixturevalue(request.param)), name=name)
    return manager, name


def _model(manager, name):
    return manager.backend(name).model


def _ids(manager, name, text=TEXT):
    return manager.backend(name)._ids(text, "test")


def _f(model, embeds, target, contrast=None):
    """log p(target) (- log p(contrast)) after ``embeds`` [1, p, H], in float32."""
    lp = torch.log_softmax(model(inputs_embeds=embeds).logits[0, -1].float(), dim=-1)
    return lp[target] - (lp[contrast] if contrast is not None else 0)


def _by_hand(model, ids, target, contrast=None):
    """The embeddings of ``ids``, df/d(embeddings) and f, with plain autograd."""
    x = model.get_input_embeddings()(torch.tensor([ids])).detach().requires_grad_(True)
    f = _f(model, x, target, contrast)
    (grad,) = torch.autograd.grad(f, x)
    return x[0].detach(), grad[0], float(f.detach())


def _greedy(model, ids):
    with torch.no_grad():
        return int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())


# -- saliency and input x gradient: exactly autograd ---------------------------------------


def test_saliency_and_input_x_gradient_equal_autograd(tiny):
    manager, name = tiny
    model, ids = _model(manager, name), _ids(manager, name)
    target = _greedy(model, ids)
    x, grad, f = _by_hand(model, ids, target)
    sal = attribute(TEXT, model=name, method="saliency", manager=manager)
    ixg = attribute(TEXT, model=name, method="input_x_gradient", manager=manager)
    for a in (sal, ixg):
        assert a.scores.shape == (1, len(ids)) and a.scores.dtype == np.float32
        assert a.target_ids == (target,) and a.input_ids == tuple(ids)
        assert math.isclose(float(a.value[0]), f, abs_tol=1e-5)
        assert a.completeness is None and a.baseline is None
        assert np.isfinite(a.scores).all()  # the first token is attributed too
    np.testing.assert_allclose(sal.scores[0], grad.norm(dim=-1).numpy(), atol=ATOL, rtol=1e-5)
    np.testing.assert_allclose(ixg.scores[0], (x * grad).sum(-1).numpy(), atol=ATOL, rtol=1e-5)
    assert "log p(token), in nats" in ixg.notes[0]
    assert any("first (BOS) one included" in n for n in ixg.notes)


def test_a_generation_has_one_row_per_output_token(tiny):
    manager, name = tiny
    g = generate(TEXT, model=name, max_new_tokens=4, logprobs=2, stream=False, manager=manager)
    a = attribute(g, method="input_x_gradient", manager=manager)
    ids = [*g.prompt_ids, *(r.id for r in g.tokens)]
    n = len(g.prompt_ids)
    assert a.output_tokens == tuple(r.text for r in g.tokens)
    assert a.target_ids == tuple(r.id for r in g.tokens) and a.prompt_tokens == n
    assert a.scores.shape == (len(g.tokens), len(ids) - 1)
    model = _model(manager, name)
    for k, record in enumerate(g.tokens):
        x, grad, f = _by_hand(model, ids[: n + k], record.id)
        np.testing.assert_allclose(a.scores[k, : n + k], (x * grad).sum(-1).numpy(), atol=ATOL,
                                   rtol=1e-5)
        assert np.isnan(a.scores[k, n + k:]).all()  # later tokens are no input of this one
        assert math.isclose(float(a.value[k]), record.logprob, abs_tol=1e-4)
    picked = attribute(g, positions=[-1, 1], manager=manager)
    assert picked.output_tokens == (g.tokens[-1].text, g.tokens[1].text)
    np.testing.assert_allclose(picked.scores[1], a.scores[1], atol=ATOL)


def test_a_generation_without_records_is_tokenized_again(manager, tiny_gpt2):
    manager.load(str(tiny_gpt2), name="gpt2")
    g = generate(TEXT, model="gpt2", max_new_tokens=4, stream=False, manager=manager)
    a = attribute(g, manager=manager)
    tokenizer = manager.backend("gpt2").tokenizer
    output = tokenizer(g.text, add_special_tokens=False)["input_ids"]
    assert a.target_ids == tuple(output) and a.prompt_tokens == len(g.prompt_ids)
    assert any("tokenized again" in note for note in a.notes)


# -- targets: chosen, alternative, contrast --------------------------------------------------


def test_an_alternative_target_replaces_the_chosen_token(tiny):
    manager, name = tiny
    g = generate(TEXT, model=name, max_new_tokens=3, logprobs=3, stream=False, manager=manager)
    ids = [*g.prompt_ids, *(r.id for r in g.tokens)]
    n, model = len(g.prompt_ids), _model(manager, name)
    alt = g.tokens[1].top[1][0]
    chosen = attribute(g, positions=1, manager=manager)
    other = attribute(g, positions=1, target=alt, manager=manager)
    assert chosen.target_ids == (g.tokens[1].id,) and other.target_ids == (alt,)
    x, grad, f = _by_hand(model, ids[: n + 1], alt)
    np.testing.assert_allclose(other.scores[0], (x * grad).sum(-1).numpy(), atol=ATOL, rtol=1e-5)
    assert not np.allclose(other.scores, chosen.scores)
    texts = manager.backend(name)._texts()
    text = texts(alt)
    if manager.backend(name).tokenizer(text, add_special_tokens=False)["input_ids"] == [alt]:
        by_text = attribute(g, positions=1, target=text, manager=manager)
        np.testing.assert_array_equal(by_text.scores, other.scores)


@pytest.mark.parametrize("method", ["input_x_gradient", "integrated_gradients", "occlusion"])
def test_a_contrast_is_the_difference_of_two_targets(tiny, method):
    manager, name = tiny
    a_id, b_id = 5, 17
    kw = {"model": name, "method": method, "manager": manager}
    if method == "integrated_gradients":
        kw["steps"] = 8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LLMMagicWarning)  # completeness is not the point here
        both = attribute(TEXT, contrast=(a_id, b_id), **kw)
        a = attribute(TEXT, target=a_id, **kw)
        b = attribute(TEXT, target=b_id, **kw)
    np.testing.assert_allclose(both.scores, a.scores - b.scores, atol=1e-5)
    assert both.contrast_ids == (b_id,) and both.target_ids == (a_id,)
    assert " vs " in both.output_tokens[0] and "log p(a) - log p(b)" in both.summary()
    assert "log-probability difference" in both.unit


# -- occlusion and integrated gradients -----------------------------------------------------


@pytest.mark.parametrize("baseline", [None, "pad", 3])
def test_occlusion_equals_recomputed_differences(tiny, baseline):
    manager, name = tiny
    model, ids = _model(manager, name), _ids(manager, name)
    target = _greedy(model, ids)
    a = attribute(TEXT, model=name, method="occlusion", baseline=baseline, manager=manager)
    embed = model.get_input_embeddings()
    with torch.no_grad():
        x = embed(torch.tensor([ids]))
        if baseline is None:
            replacement = torch.zeros(x.shape[-1])
        else:
            token = manager.backend(name).pad_id if baseline == "pad" else baseline
            replacement = embed(torch.tensor([token]))[0]
        f = float(_f(model, x, target))
        for j in range(len(ids)):
            occluded = x.clone()
            occluded[0, j] = replacement
            assert math.isclose(float(a.scores[0, j]), f - float(_f(model, occluded, target)),
                                abs_tol=1e-5)
    assert "token stays in place" in " ".join(a.notes) and a.baseline


def test_integrated_gradients_equal_the_trapezoid_rule_by_hand(tiny):
    manager, name = tiny
    model, ids = _model(manager, name), _ids(manager, name)
    target, steps = _greedy(model, ids), 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LLMMagicWarning)
        a = attribute(TEXT, model=name, method="integrated_gradients", steps=steps,
                      manager=manager)
    x = model.get_input_embeddings()(torch.tensor([ids])).detach()[0]
    total = torch.zeros_like(x)
    alphas = [(k / steps) ** 3 for k in range(steps + 1)]  # the nodes the notes state
    for k, alpha in enumerate(alphas):
        point = (alpha * x).unsqueeze(0).requires_grad_(True)
        (grad,) = torch.autograd.grad(_f(model, point, target), point)
        total += (alphas[min(k + 1, steps)] - alphas[max(k - 1, 0)]) / 2 * grad[0]
    np.testing.assert_allclose(a.scores[0], (x * total).sum(-1).numpy(), atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        gap = float(a.value[0]) - float(_f(model, torch.zeros_like(x).unsqueeze(0), target))
    error = abs(float(a.scores[0].astype(np.float64).sum()) - gap) / abs(gap)
    assert math.isclose(float(a.completeness[0]), error, rel_tol=1e-3, abs_tol=1e-6)


def test_integrated_gradients_converge_to_completeness(tiny):
    manager, name = tiny
    g = generate(TEXT, model=name, max_new_tokens=3, logprobs=1, stream=False, manager=manager)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LLMMagicWarning)  # no completeness warning
        a = attribute(g, method="integrated_gradients", steps=128, manager=manager)
    assert a.completeness.shape == (3,) and float(a.completeness.max()) < 0.01
    assert "trapezoid rule over 128 intervals" in " ".join(a.notes)
    assert "alpha = (k/steps)^3" in " ".join(a.notes)
    assert "zero vector" in a.baseline and "first (BOS) token included" in a.baseline
    assert "completeness error up to" in a.summary()
    assert np.isfinite(a.scores[:, 0]).all()  # the first token is never dropped


def test_a_poor_integration_warns_and_the_view_says_so(manager, tiny_llama):
    manager.load(str(tiny_llama), name="llama")
    with pytest.warns(LLMMagicWarning, match="miss completeness by .*Raise steps="):
        a = attribute(TEXT, model="llama", method="integrated_gradients", steps=1,
                      manager=manager)
    assert float(a.completeness[0]) > 0.01
    assert "Completeness error" in a.to_html()


# -- the view ------------------------------------------------------------------------------


def test_the_html_has_a_labelled_scale_hover_values_and_escaped_tokens(manager, tiny_gpt2):
    manager.load(str(tiny_gpt2), name="gpt2")
    text = "<b>x</b> & 'quoted' import"
    g = generate(text, model="gpt2", max_new_tokens=3, logprobs=1, stream=False,
                 manager=manager)
    a = attribute(g, manager=manager)
    html = a.to_html()
    assert a._repr_html_() == html and "<b>" not in html and "&lt;" in html
    assert "log-probability (nats) attributed" in html and "colour scale" in html
    assert "red: the input token raises f" in html
    titles = re.findall(r"<td title='([^']*)' style='background:(#[0-9a-f]{6});color:(#[0f]{3});",
                        html)
    finite = a.scores[np.isfinite(a.scores)]
    assert len(titles) == finite.size
    for value, (title, background, colour) in zip(finite, titles, strict=True):
        assert f"{float(value):+.6g}" in title
        rgb = tuple(int(background[i:i + 2], 16) for i in (1, 3, 5))
        assert colour == ink(rgb)
    assert html.count("not an input of this token") == int(np.isnan(a.scores).sum())
    assert repr(a).startswith("<Attribution of 'gpt2' by input_x_gradient")
    top = a.top(-1, 3)
    assert len(top) == 3 and abs(top[0][2]) == np.nanmax(np.abs(a.scores[-1]))
    assert [abs(s) for _, _, s in top] == sorted((abs(s) for _, _, s in top), reverse=True)


# -- state, modes and refusals ----------------------------------------------------------------


def test_the_model_state_is_restored_and_inference_mode_is_no_obstacle(manager, tiny_gpt2):
    manager.load(str(tiny_gpt2), name="gpt2")
    model = _model(manager, "gpt2")
    model.train()
    model.lm_head.weight.requires_grad_(True)
    frozen = [p for p in model.parameters() if p is not model.lm_head.weight][0]
    frozen.requires_grad_(False)
    try:
        with torch.inference_mode():
            a = attribute(TEXT, model="gpt2", method="saliency", manager=manager)
        assert model.training and model.lm_head.weight.requires_grad
        assert not frozen.requires_grad and model.lm_head.weight.grad is None
        model.eval()
        b = attribute(TEXT, model="gpt2", method="saliency", manager=manager)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)  # dropout was off
    finally:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(True)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"method": "shap"}, "method must be one of"),
    ({"steps": 0}, "steps is how many intervals"),
    ({"steps": True}, "steps is how many intervals"),
    ({"steps": math.nan}, "steps is how many intervals"),
    ({"steps": 10**30}, "steps is how many intervals"),
    ({"baseline": "pad"}, "baseline= is for integrated_gradients and occlusion"),
    ({"method": "occlusion", "baseline": "mean"}, "baseline must be 'zero', 'pad' or a token"),
    ({"method": "occlusion", "baseline": 10**9}, "not in the vocabulary"),
    ({"target": "import statement binds"}, "not one; pass a single token"),
    ({"target": ""}, "The target is empty"),
    ({"target": True}, "one token's text or its id"),
    ({"target": 10**9}, "not in the vocabulary"),
    ({"contrast": (5, 5)}, "with itself"),
    ({"contrast": "ab"}, "contrast must be a pair"),
    ({"contrast": (5, 6), "target": 5}, "not both"),
    ({"positions": 0}, "positions= picks output tokens of a Generation"),
    ({"max_tokens": 3}, r"reads 12 tokens, past the cap of 3.*max_tokens=12"),
    ({"max_tokens": 0}, "max_tokens must be a positive integer"),
])
def test_bad_arguments_are_refused_in_one_line(manager, tiny_gpt2, kwargs, message):
    manager.load(str(tiny_gpt2), name="gpt2")
    assert len(_ids(manager, "gpt2")) == 12
    with pytest.raises(InvalidOptionError, match=message) as info:
        attribute(TEXT, model="gpt2", manager=manager, **kwargs)
    assert "\n" not in str(info.value)


def test_bad_inputs_and_positions_are_refused(manager, tiny_gpt2):
    manager.load(str(tiny_gpt2), name="gpt2")
    for empty in ("", "   "):
        with pytest.raises(InvalidOptionError, match="The text is empty"):
            attribute(empty, model="gpt2", manager=manager)
    with pytest.raises(InvalidOptionError, match="a text or a Generation"):
        attribute(42, model="gpt2", manager=manager)
    g = generate(TEXT, model="gpt2", max_new_tokens=3, logprobs=1, stream=False,
                 manager=manager)
    for bad in (3, -4, [0, 0], [], True, "1"):
        with pytest.raises(InvalidOptionError, match="positions"):
            attribute(g, positions=bad, manager=manager)
    with pytest.raises(InvalidOptionError, match="single output token"):
        attribute(g, target=5, manager=manager)
    with pytest.raises(InvalidOptionError, match="no output tokens"):
        attribute(dataclasses.replace(g, text="", tokens=()), manager=manager)


def test_a_served_model_is_refused_in_one_line(manager, monkeypatch):
    from llm_magic.backends import openai as served

    def connectless(cls, spec, placement=None):
        return cls(spec, client=None, model=spec.model, served=[spec.model])

    monkeypatch.setattr(served.OpenAIBackend, "load", classmethod(connectless))
    name = manager.load("http://127.0.0.1:9/v1", model="remote").name
    with pytest.raises(NotAvailableError, match="'openai' backend cannot attribute") as info:
        attribute(TEXT, model=name, manager=manager)
    assert "\n" not in str(info.value)


def test_int8_attributes_the_quantized_model_and_int4_only_by_occlusion(manager, tiny_llama):
    manager.load("demo", quantize="int8")
    model = _model(manager, "demo-int8")
    ids = _ids(manager, "demo-int8")
    target = _greedy(model, ids)
    a = attribute(TEXT, model="demo-int8", manager=manager)
    x, grad, _ = _by_hand(model, ids, target)
    np.testing.assert_allclose(a.scores[0], (x * grad).sum(-1).numpy(), atol=1e-5, rtol=1e-4)
    assert any("int8" in note for note in a.notes)
    manager.load(str(tiny_llama), name="llama4", quantize="int4")
    for method in ("saliency", "input_x_gradient", "integrated_gradients"):
        with pytest.raises(NotAvailableError, match="Gradients do not flow through int4.*"
                                                    "method='occlusion'") as info:
            attribute(TEXT, model="llama4", method=method, manager=manager)
        assert "\n" not in str(info.value)
    occluded = attribute(TEXT, model="llama4", method="occlusion", manager=manager)
    assert np.isfinite(occluded.scores).all()


def test_the_result_is_a_frozen_attribution(manager, tiny_gpt2):
    manager.load(str(tiny_gpt2), name="gpt2")
    a = attribute(TEXT, model="gpt2", manager=manager)
    assert isinstance(a, Attribution) and a.model == "gpt2" and a.method == "input_x_gradient"
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.method = "saliency"  # type: ignore[misc]
    with pytest.raises(InvalidOptionError, match="row must be"):
        a.top(1)
    with pytest.raises(InvalidOptionError, match="k must be"):
        a.top(0, 0)
