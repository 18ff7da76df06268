"""A seed gives the same text whatever else runs in the kernel.

Seeded sampling draws from its own ``torch.Generator``, never torch's global
one: another model generating in another thread (seeded or not) cannot shift
its draws, and a seeded generation leaves the user's global RNG alone. The
texts are compared with the same generation run alone, and with transformers'
own sampling after ``torch.manual_seed`` (seeded outputs did not change).
"""

from __future__ import annotations

import json
import math
import threading

import pytest
import torch

from llm_magic.generation import generate, generate_batch
from llm_magic.manager import ModelManager

PROMPT = "The import statement"
SEEDED = {"gpt2": 1, "llama": 2}
TOL = 1e-4


@pytest.fixture(scope="module")
def models(tiny_gpt2, tiny_llama, tmp_path_factory):
    """GPT-2 and Llama (two architectures), the demo, and a GPT-2 whose checkpoint samples
    with its own top-p and min-p."""
    from _models import build_tiny_model

    own = build_tiny_model(tmp_path_factory.mktemp("own-warpers"), arch="gpt2", seed=3)
    config = json.loads((own / "generation_config.json").read_text())
    config.update(top_p=0.7, min_p=0.02)
    (own / "generation_config.json").write_text(json.dumps(config))
    m = ModelManager()
    m.load(str(tiny_gpt2), name="gpt2")
    m.load(str(tiny_llama), name="llama")
    m.load("demo", name="demo")
    m.load(str(own), name="own")
    yield m
    for name in m.names():
        m.unload(name)


def sample(models: ModelManager, name: str, seed: int | None, n: int = 24, **options):
    return generate(PROMPT, model=name, max_new_tokens=n, temperature=1.0, seed=seed,
                    manager=models, **options)


def in_threads(*jobs):
    """Run each job in its own thread, all released at once; their results, or the error."""
    start = threading.Barrier(len(jobs))
    results: list = [None] * len(jobs)
    errors: list[BaseException] = []

    def run(i, job):
        start.wait()
        try:
            results[i] = job()
        except BaseException as exc:  # handed to the test below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    if errors:
        raise errors[0]
    return results


def test_two_models_seeded_at_once_give_their_texts_alone(models):
    alone = {name: sample(models, name, seed).text for name, seed in SEEDED.items()}
    assert alone["gpt2"] != sample(models, "gpt2", 3).text  # the seed matters
    rounds = 8

    def seeded(name):
        return lambda: [sample(models, name, SEEDED[name]).text for _ in range(rounds)]

    def unseeded():  # a third model sampling from the global RNG meanwhile
        return [sample(models, "demo", None, n=12).text for _ in range(rounds)]

    gpt2, llama, _ = in_threads(seeded("gpt2"), seeded("llama"), unseeded)
    assert gpt2 == [alone["gpt2"]] * rounds
    assert llama == [alone["llama"]] * rounds


def test_a_seed_reproduces_across_calls_and_leaves_the_global_rng_alone(models):
    first = sample(models, "llama", 5, top_k=40, top_p=0.9)
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    again = sample(models, "llama", 5, top_k=40, top_p=0.9)
    assert torch.equal(torch.rand(4), expected)  # the user's random stream is untouched
    sample(models, "gpt2", None)
    third = sample(models, "llama", 5, top_k=40, top_p=0.9)
    assert first.text == again.text == third.text
    assert first.text != sample(models, "llama", 6, top_k=40, top_p=0.9).text


def raw_sample(models: ModelManager, name: str, ids: list[int], n: int, seed: int,
               **sampling) -> list[int]:
    """transformers' own sampling from the global RNG after ``torch.manual_seed(seed)``."""
    backend = models.backend(name)
    at = backend.model.device
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = backend.model.generate(
            input_ids=torch.tensor([ids], device=at),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=at),
            max_new_tokens=n, min_new_tokens=0, do_sample=True, pad_token_id=backend.pad_id,
            eos_token_id=list(backend.eos_ids), **sampling,
        )
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize(("name", "options"), [
    ("gpt2", {"temperature": 1.0}),
    ("llama", {"temperature": 0.8, "top_k": 30, "top_p": 0.9}),
    # Unset top-p: the checkpoint's own top-p and min-p apply, as in transformers' sampling.
    ("own", {"temperature": 1.3}),
])
def test_seeded_text_is_transformers_sampling_after_manual_seed(models, name, options):
    g = generate(PROMPT, model=name, max_new_tokens=16, seed=9, logprobs=1, manager=models,
                 **options)
    expected = raw_sample(models, name, list(g.prompt_ids), 16, 9,
                          **{"top_k": 0, **options})
    assert [r.id for r in g.tokens] == expected[: len(g.tokens)]
    assert len(g.tokens) == len(expected) or expected[len(g.tokens)] in models.backend(
        name).eos_ids


def test_a_seeded_batch_reproduces_even_beside_another_model(models):
    prompts = ["The import", "A for loop", "Hello there, how are you"]

    def batch(seed):
        gens = generate_batch(prompts, model="gpt2", max_new_tokens=16, temperature=1.0,
                              seed=seed, manager=models)
        return [g.text for g in gens]

    alone = batch(4)
    assert batch(4) == alone and batch(5) != alone
    texts, _ = in_threads(lambda: [batch(4) for _ in range(4)],
                          lambda: [sample(models, "llama", 2).text for _ in range(6)])
    assert texts == [alone] * 4


# -- token records of a seeded sampling -----------------------------------------------


def warp(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
         top_p: float | None = None, min_p: float | None = None) -> torch.Tensor:
    """Temperature, top-k, top-p, then min-p, written out by hand; log-probabilities."""
    cut = torch.full_like(logits, -math.inf)
    x = logits / temperature
    if top_k:
        x = torch.where(x < torch.sort(x, descending=True).values[top_k - 1], cut, x)
    if top_p is not None:
        p = torch.softmax(x, dim=-1)
        order = torch.argsort(p, descending=True)
        before = torch.cumsum(p[order], dim=-1) - p[order]  # mass of the likelier tokens
        keep = torch.zeros_like(p, dtype=torch.bool)
        keep[order[before < top_p]] = True  # the nucleus: the likeliest always stays
        x = torch.where(keep, x, cut)
    if min_p is not None:
        p = torch.softmax(x, dim=-1)
        x = torch.where(p < min_p * p.max(), cut, x)
    return torch.log_softmax(x, dim=-1)


def check_records(records, rows) -> None:
    """Each record against its hand-warped row: chosen, top list, entropy."""
    for r, row in zip(records, rows, strict=True):
        kept = int(torch.isfinite(row).sum())
        assert math.isfinite(r.logprob) and r.rank <= kept  # drawn from what the warpers kept
        assert abs(r.logprob - float(row[r.id])) < TOL
        for token, _text, lp in r.top:
            assert lp == float(row[token]) or abs(lp - float(row[token])) < TOL
        best = torch.topk(row, len(r.top)).values.tolist()
        assert all(a == b or abs(a - b) < TOL for (_, _, a), b in zip(r.top, best, strict=True))
        p = row.exp()
        hand = float(-(p[p > 0] * row[p > 0]).sum())
        assert r.entropy is not None and abs(r.entropy - hand) < TOL


def logits_over(models: ModelManager, name: str, ids: list[int]) -> torch.Tensor:
    model = models.backend(name).model
    with torch.inference_mode():
        ids_there = torch.tensor([ids], device=model.device)
        return model(input_ids=ids_there, use_cache=False).logits[0].float().cpu()


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_sampled_records_of_a_seeded_generation_are_the_warped_distribution(models, name):
    settings = {"temperature": 0.7, "top_k": 12, "top_p": 0.8}
    g = generate(PROMPT, model=name, max_new_tokens=8, seed=5, logprobs=20,
                 logprobs_mode="sampled", manager=models, **settings)
    prompt, new = list(g.prompt_ids), [r.id for r in g.tokens]
    logits = logits_over(models, name, prompt + new)
    rows = [warp(logits[len(prompt) + i - 1], **settings) for i in range(5)]
    assert all(int(torch.isfinite(row).sum()) <= 12 for row in rows)
    check_records(g.tokens[:5], rows)
    raw = generate(PROMPT, model=name, max_new_tokens=8, seed=5, logprobs=20, manager=models,
                   **settings)
    assert [r.id for r in raw.tokens] == new  # recording never changes what is drawn
    raw_lp = torch.log_softmax(logits, dim=-1)
    for i, r in enumerate(raw.tokens):
        assert abs(r.logprob - float(raw_lp[len(prompt) + i - 1, r.id])) < TOL


def test_sampled_records_follow_the_checkpoints_own_warpers(models):
    """Unset, top-p is the checkpoint's (0.7, then its min-p): what is drawn from, and recorded."""
    g = generate(PROMPT, model="own", max_new_tokens=6, temperature=1.0, seed=2, logprobs=20,
                 logprobs_mode="sampled", manager=models)
    prompt, new = list(g.prompt_ids), [r.id for r in g.tokens]
    logits = logits_over(models, "own", prompt + new)
    rows = [warp(logits[len(prompt) + i - 1], top_p=0.7, min_p=0.02) for i in range(len(new))]
    assert all(int(torch.isfinite(row).sum()) < row.shape[-1] * 0.8 for row in rows)
    check_records(g.tokens, rows)
