"""The token view's "why?" under ipywidgets' dummy comm, against plain torch autograd.

A click in the page is a comm ``custom`` message (``{"action": "why", ...}``), as
the view's branching is; the row the kernel sends back (``why_scores``, float32)
is checked against input x gradient (and the contrast of "why not?") computed
here with torch on the same tiny model, and the errors are the view's one line.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch

from llm_magic.analysis.attribution import ATTRIBUTION_MAX_TOKENS
from llm_magic.analysis.tokens import score
from llm_magic.generation import generate
from llm_magic.manager import ModelManager
from llm_magic.widgets import _why
from llm_magic.widgets.tokens import TokensWidget

PROMPT = "The import statement binds a name"


@pytest.fixture(scope="module")
def models(tiny_gpt2, tiny_llama):
    m = ModelManager()
    m.load(str(tiny_gpt2), name="gpt2")
    m.load(str(tiny_llama), name="llama")
    yield m
    for name in m.names():
        m.unload(name)


def click(view: TokensWidget, **content) -> None:
    """A message from the page, as the comm delivers it."""
    view._handle_msg({"content": {"data": {"method": "custom", "content": content}},
                      "buffers": []})


def row_of(view: TokensWidget) -> np.ndarray:
    return np.frombuffer(view.why_scores, "<f4")


def by_hand(model, ids: list[int], target: int, contrast: int | None = None):
    """Input x gradient of log p(target) (- log p(contrast)) after ``ids``, with autograd."""
    x = model.get_input_embeddings()(torch.tensor([ids])).detach().requires_grad_(True)
    lp = torch.log_softmax(model(inputs_embeds=x).logits[0, -1].float(), dim=-1)
    f = lp[target] - (lp[contrast] if contrast is not None else 0)
    (grad,) = torch.autograd.grad(f, x)
    return (x[0] * grad[0]).sum(-1).detach().numpy(), float(f.detach())


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_why_sends_the_row_of_input_x_gradient(models, name):
    g = generate(PROMPT, model=name, max_new_tokens=8, logprobs=5, manager=models)
    view = TokensWidget(g, manager=models)
    assert view.explainable and view.why == {} and view.why_method == "input_x_gradient"
    click(view, action="why", position=5, choice=-1, method="input_x_gradient")
    view._explainer.wait()
    assert view.error == "" and view.why_state == ""
    ids = [*g.prompt_ids, *(r.id for r in g.tokens[:5])]
    want, f = by_hand(models.backend(name).model, ids, g.tokens[5].id)
    got = row_of(view)
    assert len(got) == len(ids) == view.why["columns"]
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-4)
    info = view.why
    assert info["position"] == 5 and info["choice"] == -1 and info["branch"] == 0
    assert info["prompt_tokens"] == len(g.prompt_ids) == len(view.why_prompt)
    tok = models.backend(name).tokenizer
    assert view.why_prompt == [tok.decode([i]) for i in g.prompt_ids]
    assert math.isclose(info["f"], f, rel_tol=1e-5, abs_tol=1e-6)
    assert math.isclose(info["f"], g.tokens[5].logprob, rel_tol=1e-3, abs_tol=1e-4)
    assert math.isclose(info["largest"], float(np.abs(want).max()), rel_tol=1e-5)
    assert info["caption"] == "log-probability attributed, nats"
    assert info["completeness"] is None and info["warning"] == ""
    # Back to the probability shading.
    click(view, action="unwhy")
    assert view.why == {} and view.why_scores == b"" and view.why_prompt == []


def test_why_not_attributes_chosen_minus_alternative(models):
    g = generate(PROMPT, model="gpt2", max_new_tokens=8, logprobs=5, manager=models)
    view = TokensWidget(g, manager=models)
    record = g.tokens[3]
    alt_id, alt_text, alt_lp = record.top[2]
    assert alt_id != record.id
    why = view.explain(3, 2, wait=True)
    assert why is not None and view.error == ""
    ids = [*g.prompt_ids, *(r.id for r in g.tokens[:3])]
    want, f = by_hand(models.backend("gpt2").model, ids, record.id, alt_id)
    np.testing.assert_allclose(row_of(view), want, atol=2e-6, rtol=1e-4)
    info = view.why
    assert math.isclose(info["f"], record.logprob - alt_lp, rel_tol=1e-3, abs_tol=1e-4)
    assert info["caption"] == "log-probability difference attributed, nats"
    assert info["target"].startswith("log p(") and "\u2212 log p(" in info["target"]
    assert "and not" in info["about"] and info["choice"] == 2
    # The chosen token is no alternative to itself.
    chosen = next(j for j, (i, _, _) in enumerate(record.top) if i == record.id)
    click(view, action="why", position=3, choice=chosen)
    view._explainer.wait()
    assert "chosen token" in view.error and "\n" not in view.error
    assert view.why["choice"] == 2  # the row on screen stays


def test_integrated_gradients_show_completeness_and_warn_above_one_percent(models, monkeypatch):
    g = generate(PROMPT, model="gpt2", max_new_tokens=6, logprobs=3, manager=models)
    view = TokensWidget(g, manager=models)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing reaches the cell's output from the view
        view.explain(4, method="integrated_gradients", wait=True)
    info = view.why
    assert view.error == "" and view.why_method == "integrated_gradients"
    assert info["method"] == "integrated_gradients" and 0 <= info["completeness"] <= 0.01
    assert info["warning"] == ""
    monkeypatch.setattr(_why, "COMPLETENESS_TOLERANCE", 0.0)
    view.explain(4, method="integrated_gradients", wait=True)
    assert view.why["warning"].startswith("Completeness error ")
    assert "over 0 %" in view.why["warning"] and "\n" not in view.why["warning"]


def test_every_method_of_the_selector_answers(models):
    g = generate(PROMPT, model="llama", max_new_tokens=5, logprobs=3, manager=models)
    view = TokensWidget(g, manager=models)
    assert list(view.why_methods) == ["input_x_gradient", "integrated_gradients", "occlusion",
                                      "saliency"]
    for method in view.why_methods:
        view.explain(2, method=method, wait=True)
        assert view.error == "" and view.why["method"] == method
        assert np.isfinite(row_of(view)).all() and len(row_of(view)) == view.why["columns"]
    assert (row_of(view) >= 0).all() and "never negative" in view.why["caption"]


@pytest.mark.parametrize("content, message", [
    ({"position": 99}, "no output token 99"),
    ({"position": True}, "no output token True"),
    ({"position": "3"}, "no output token '3'"),
    ({"position": 1, "choice": 17}, "no alternative 17"),
    ({"position": 1, "method": "magic"}, "method must be one of"),
    ({"position": 1, "method": "<b>x</b>"}, "method must be one of"),
])
def test_hostile_requests_are_one_line_and_keep_the_row(models, content, message):
    g = generate(PROMPT, model="gpt2", max_new_tokens=4, logprobs=3, manager=models)
    view = TokensWidget(g, manager=models)
    view.explain(1, wait=True)
    before = (dict(view.why), view.why_scores, view.why_method)
    click(view, action="why", **content)
    view._explainer.wait()
    assert message in view.error and "\n" not in view.error and "Traceback" not in view.error
    assert (view.why, view.why_scores, view.why_method) == before
    assert view.why_state == ""


def test_a_served_generation_is_refused_in_one_line(models, monkeypatch):
    from llm_magic.backends import openai as served

    def connectless(cls, spec, placement=None):
        return cls(spec, client=None, model=spec.model, served=[spec.model])

    monkeypatch.setattr(served.OpenAIBackend, "load", classmethod(connectless))
    manager = ModelManager()
    name = manager.load("http://127.0.0.1:9/v1", model="remote").name
    g = generate(PROMPT, model="gpt2", max_new_tokens=4, logprobs=3, manager=models)
    remote = dataclasses.replace(g, model=name, prompt_ids=None, tokens=tuple(
        dataclasses.replace(r, id=None, top=tuple((None, t, lp) for _, t, lp in r.top))
        for r in g.tokens))
    view = TokensWidget(remote, manager=manager)
    view.explain(2, wait=True)
    assert "cannot attribute" in view.error and "\n" not in view.error
    assert view.why == {}
    view.explain(2, 1, wait=True)
    assert "served model" in view.error.lower() and view.why == {}


def test_int4_needs_occlusion_and_says_so(tiny_llama):
    manager = ModelManager()
    manager.load(str(tiny_llama), name="llama4", quantize="int4")
    g = generate(PROMPT, model="llama4", max_new_tokens=4, logprobs=3, manager=manager)
    view = TokensWidget(g, manager=manager)
    view.explain(2, wait=True)
    assert "Gradients do not flow through int4" in view.error and "\n" not in view.error
    view.explain(2, method="occlusion", wait=True)
    assert view.error == "" and np.isfinite(row_of(view)).all()
    manager.unload("llama4")


def test_a_sequence_too_long_is_refused_and_the_row_is_bounded(tmp_path):
    from _models import build_tiny_model

    path = build_tiny_model(tmp_path / "long", arch="gpt2", context=2048, seed=1)
    manager = ModelManager()
    manager.load(str(path), name="long")
    g = generate("x " * 600, model="long", max_new_tokens=3, logprobs=2, manager=manager)
    assert len(g.prompt_ids) > ATTRIBUTION_MAX_TOKENS
    view = TokensWidget(g, manager=manager)
    view.explain(1, wait=True)
    assert "max_tokens" in view.error and "\n" not in view.error and view.why == {}
    short = generate("x " * 100, model="long", max_new_tokens=3, logprobs=2, manager=manager)
    why = TokensWidget(short, manager=manager).explain(2, wait=True)
    assert why is not None
    columns = why.info["columns"]
    assert columns == len(short.prompt_ids) + 2
    # One float32 per input token, and the prompt tokens' texts: nothing else grows with it.
    assert len(why.scores) == 4 * columns
    assert why.bytes <= 4 * columns + sum(len(t.encode()) for t in why.prompt)
    manager.unload("long")


def test_a_switch_of_branch_clears_the_row_and_a_late_row_is_dropped(models, monkeypatch):
    g = generate(PROMPT, model="gpt2", max_new_tokens=6, logprobs=3, manager=models)
    view = TokensWidget(g, manager=models)
    view.explain(3, wait=True)
    assert view.why["branch"] == 0
    b = view.branch(2, g.tokens[2].top[1][0], wait=True)
    assert b is not None and view.current == 1 and view.why == {}
    view.explain(4, wait=True)
    assert view.why["branch"] == 1
    np.testing.assert_allclose(
        row_of(view)[len(b.prompt_ids):],
        by_hand(models.backend("gpt2").model, [*b.prompt_ids, *(r.id for r in b.tokens[:4])],
                b.tokens[4].id)[0][len(b.prompt_ids):], atol=2e-6, rtol=1e-4)
    # Asked on branch 1, answered after the page went back to the original: not shown there.
    view.why = {}
    explainer = view._explainer
    real = _why.explain

    def slow(*args, **kwargs):
        view.current = 0
        return real(*args, **kwargs)

    monkeypatch.setattr(_why, "explain", slow)
    assert explainer.request(1, wait=True) is not None  # computed, then dropped
    assert view.current == 0 and view.why == {} and view.why_state == ""


def test_a_scored_text_has_no_why(models):
    s = score(PROMPT, model="gpt2", logprobs=3, manager=models)
    view = TokensWidget(s, manager=models)
    assert not view.explainable
    click(view, action="why", position=1)
    assert "reads a generation" in view.error and view.why == {}
