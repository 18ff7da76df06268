"""Token records, scoring and branching, checked against independent forward passes.

Every number a record holds is recomputed here from a plain forward pass of the
same model over the final sequence (float32, no cache), never from llm_magic's
own helpers: the log-probability and rank of the chosen token, the top K, the
entropy, and in ``sampled`` mode the distribution after temperature, top-k and
top-p, warped here by hand.
"""

from __future__ import annotations

import _thread
import dataclasses
import json
import math
import threading

import pytest
import torch

import llm_magic as lm
from llm_magic.errors import InvalidOptionError
from llm_magic.generation import branch, generate, generate_batch
from llm_magic.manager import ModelManager

TOL = 1e-4


def _byte_chars() -> dict[str, int]:
    """Byte-level BPE's alphabet: the character that stands for each byte (GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = (b for b in range(256) if b not in printable)
    table = {chr(b): b for b in printable}
    table.update({chr(256 + n): b for n, b in enumerate(extra)})
    return table


BYTES = _byte_chars()
MODELS = ("gpt2", "llama", "demo")


@pytest.fixture(scope="module")
def models(tiny_gpt2, tiny_llama, tmp_path_factory):
    """One manager for the module with the two tiny models, the demo and a never-ending one."""
    from _models import build_tiny_model

    long_dir = build_tiny_model(tmp_path_factory.mktemp("long"), arch="llama", context=4096)
    for name in ("config.json", "generation_config.json"):
        config = json.loads((long_dir / name).read_text())
        config["eos_token_id"] = 10**6  # outside the vocabulary: it runs until stopped
        (long_dir / name).write_text(json.dumps(config))
    m = ModelManager()
    m.load(str(tiny_gpt2), name="gpt2")
    m.load(str(tiny_llama), name="llama")
    m.load("demo", name="demo")
    m.load(str(long_dir), name="long")
    yield m
    for name in m.names():
        m.unload(name)


# -- the independent reference -----------------------------------------------------


def forward(models: ModelManager, name: str, ids: list[int]) -> torch.Tensor:
    """Float32 log-softmax of a plain forward pass: row t is the prediction of token t + 1."""
    model = models.backend(name).model
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def entropy(lp: torch.Tensor) -> float:
    p = lp.exp()
    return float(-(p * torch.where(p > 0, lp, torch.zeros_like(lp))).sum())


def rank_bounds(row: torch.Tensor, token: int) -> tuple[int, int]:
    """The ranks ``token`` may have: logits within float noise of it may sort either way."""
    at = float(row[token])
    return int((row > at + 1e-5).sum()) + 1, int((row > at - 1e-5).sum())


def close(a: float, b: float) -> bool:
    """Within the tolerance; two -inf (tokens filtered out) are equal."""
    return a == b or abs(a - b) < TOL


def check_against(records, row_of, ids_after: list[int]) -> None:
    """Each record against ``row_of(i)``, the reference distribution of new token ``i``."""
    assert [r.id for r in records] == ids_after
    for i, r in enumerate(records):
        row = row_of(i)
        assert abs(r.logprob - float(row[r.id])) < TOL, (i, r.logprob, float(row[r.id]))
        low, high = rank_bounds(row, r.id)
        assert low <= r.rank <= max(low, high), (i, r.rank, low, high)
        lps = [lp for _, _, lp in r.top]
        assert lps == sorted(lps, reverse=True)
        best = torch.topk(row, len(r.top)).values.tolist()
        assert all(close(a, b) for a, b in zip(lps, best, strict=True)), (i, lps, best)
        for token, _text, lp in r.top:
            assert close(lp, float(row[token]))
        assert r.entropy is not None and abs(r.entropy - entropy(row)) < TOL


def check_generation(models: ModelManager, g) -> None:
    """``g.tokens`` against a raw forward pass over the prompt ids and the generated ids."""
    prompt = list(g.prompt_ids)
    new = [r.id for r in g.tokens]
    lp = forward(models, g.model, prompt + new)
    # No off-by-one: the logits at position t predict token t + 1.
    check_against(g.tokens, lambda i: lp[len(prompt) + i - 1], new)
    assert len(g.tokens) == g.stats.new_tokens


# -- generation records ----------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_greedy_records_match_a_raw_forward_pass(models, name):
    g = generate("The import statement", model=name, max_new_tokens=10, logprobs=5,
                 manager=models)
    assert g.logprobs_mode == "raw" and len(g.tokens) == 10
    assert all(r.rank == 1 and r.top[0][0] == r.id for r in g.tokens)  # greedy: always rank 1
    assert all(len(r.top) == 5 for r in g.tokens)
    check_generation(models, g)
    tokenizer = models.backend(name).tokenizer
    assert g.text == tokenizer.decode([r.id for r in g.tokens], skip_special_tokens=True)


def test_records_are_not_shifted_by_one(models):
    g = generate("The import statement", model="demo", max_new_tokens=8, logprobs=3,
                 manager=models)
    prompt = list(g.prompt_ids)
    lp = forward(models, "demo", prompt + [r.id for r in g.tokens])
    first = g.tokens[0]  # predicted by the prompt's last position
    assert abs(first.logprob - float(lp[len(prompt) - 1, first.id])) < TOL
    shifted = [abs(r.logprob - float(lp[len(prompt) + i, r.id])) for i, r in enumerate(g.tokens)]
    assert max(shifted) > 1e-2  # the other alignment does not fit


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_raw_records_of_a_sampled_generation_match_too(models, name):
    g = generate("The import statement", model=name, max_new_tokens=12, temperature=1.3,
                 top_k=40, seed=3, logprobs=20, manager=models)
    assert len({r.id for r in g.tokens}) > 1 and max(r.rank for r in g.tokens) > 1
    assert all(len(r.top) == 20 for r in g.tokens)
    check_generation(models, g)


@pytest.mark.parametrize("name", MODELS)
def test_batch_records_match_a_raw_forward_pass_per_prompt(models, name):
    prompts = ["The import statement", "A", "Hello there, how are you today"]
    gens = generate_batch(prompts, model=name, max_new_tokens=6, logprobs=4, manager=models)
    assert [g.prompt for g in gens] == prompts
    for g in gens:
        assert g.tokens is not None and len(g.tokens) == g.stats.new_tokens > 0
        assert all(r.rank == 1 for r in g.tokens)
        check_generation(models, g)  # unpadded: padding leaves the distributions alone
    single = generate(prompts[1], model=name, max_new_tokens=6, logprobs=4, manager=models)
    assert [r.id for r in single.tokens] == [r.id for r in gens[1].tokens]


def test_records_across_many_reductions_match_one(models, monkeypatch):
    """A buffer of 3 steps: 14 tokens reduce in five parts, the last one partial."""
    from llm_magic.backends import _logprobs

    def both(**options):
        single = generate("The import statement", model="gpt2", max_new_tokens=14,
                          logprobs=4, manager=models, **options)
        batch = generate_batch(["The import statement", "A"], model="gpt2", max_new_tokens=14,
                               logprobs=4, manager=models, **options)
        return [single, *batch]

    sampled = {"temperature": 0.9, "top_k": 30, "seed": 5, "logprobs_mode": "sampled"}
    whole = both(), both(**sampled)
    monkeypatch.setattr(_logprobs, "_KEEP_STEPS", 3)
    parts = both(), both(**sampled)
    for one, many in zip(whole, parts, strict=True):
        for a, b in zip(one, many, strict=True):
            assert len(b.tokens) == b.stats.new_tokens > 3
            assert [(r.id, r.rank, [t[0] for t in r.top]) for r in a.tokens] == \
                   [(r.id, r.rank, [t[0] for t in r.top]) for r in b.tokens]
            assert all(close(x.logprob, y.logprob) for x, y in zip(a.tokens, b.tokens, strict=True))
    for g in parts[0]:
        check_generation(models, g)


def warp(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus), written out; log-probabilities."""
    x = logits / temperature
    kth = torch.sort(x, descending=True).values[top_k - 1]
    x = torch.where(x < kth, torch.full_like(x, -math.inf), x)
    order = torch.argsort(x)  # ascending
    p = torch.softmax(x[order], dim=-1)
    tail = torch.cumsum(p, dim=-1)  # mass of each token and every less likely one
    drop = tail <= 1 - top_p
    drop[-1] = False  # the likeliest always stays
    out = x.clone()
    out[order[drop]] = -math.inf
    return torch.log_softmax(out, dim=-1)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_sampled_mode_is_the_warped_distribution(models, name):
    settings = {"temperature": 0.7, "top_k": 12, "top_p": 0.6}
    g = generate("The import statement", model=name, max_new_tokens=10, seed=5, logprobs=20,
                 logprobs_mode="sampled", manager=models, **settings)
    assert g.logprobs_mode == "sampled"
    prompt = list(g.prompt_ids)
    new = [r.id for r in g.tokens]
    model = models.backend(name).model
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt + new]), use_cache=False).logits[0].float()
    rows = [warp(logits[len(prompt) + i - 1], **settings) for i in range(len(new))]
    for r, row in zip(g.tokens, rows, strict=True):
        kept = int(torch.isfinite(row).sum())
        assert 1 <= kept <= 12 and r.rank <= kept  # what was drawn is in the nucleus
        finite_top = [(i, lp) for i, _, lp in r.top if math.isfinite(lp)]
        assert len(finite_top) == kept  # the rest of the 20 are filtered out (-inf)
        assert all(math.isinf(lp) and lp < 0 for _, _, lp in r.top[kept:])
        assert abs(sum(math.exp(lp) for _, lp in finite_top) - 1) < TOL
    check_against(g.tokens, lambda i: rows[i], new)
    raw = generate("The import statement", model=name, max_new_tokens=10, seed=5, logprobs=20,
                   manager=models, **settings)
    assert [r.id for r in raw.tokens] == new  # recording never changes what is drawn
    assert any(abs(a.logprob - b.logprob) > 1e-3 for a, b in zip(raw.tokens, g.tokens,
                                                                 strict=True))


def test_sampled_mode_of_a_greedy_generation_is_the_raw_distribution(models):
    a = generate("Hello", model="gpt2", max_new_tokens=5, logprobs=3, manager=models)
    b = generate("Hello", model="gpt2", max_new_tokens=5, logprobs=3, logprobs_mode="sampled",
                 manager=models)
    assert a.tokens == b.tokens and b.logprobs_mode == "sampled"


def test_batch_in_sampled_mode(models):
    settings = {"temperature": 0.8, "top_k": 8, "top_p": 1.0}
    gens = generate_batch(["The import", "A for loop"], model="llama", max_new_tokens=5, seed=2,
                          logprobs=8, logprobs_mode="sampled", manager=models, **settings)
    for g in gens:
        prompt, new = list(g.prompt_ids), [r.id for r in g.tokens]
        model = models.backend("llama").model
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([prompt + new])).logits[0].float()
        rows = [warp(logits[len(prompt) + i - 1], **settings) for i in range(len(new))]
        check_against(g.tokens, rows.__getitem__, new)


# -- texts: keyed by id, partial bytes, spaces -------------------------------------


def test_records_are_keyed_by_id_and_an_ambiguous_text_is_refused(models):
    g = generate("The import statement", model="gpt2", max_new_tokens=6, temperature=1.0,
                 seed=1, logprobs=5, manager=models)
    at = 2
    record = g.tokens[at]
    (first, text, lp0), (second, _, lp1), *rest = record.top
    # Two ids that read the same: the record must tell them apart by id.
    twin = dataclasses.replace(record, top=((first, text, lp0), (second, text, lp1), *rest))
    forked = dataclasses.replace(g, tokens=g.tokens[:at] + (twin,) + g.tokens[at + 1:])
    with pytest.raises(InvalidOptionError, match=rf"Several alternatives.*ids \[{first}, "
                                                 rf"{second}\].*pass the id"):
        fork(models, forked, at, text)
    by_id = fork(models, forked, at, second)
    assert by_id.tokens[at].id == second and by_id.tokens[at].rank == 2
    assert [r.id for r in by_id.tokens[:at]] == [r.id for r in g.tokens[:at]]


def test_partial_utf8_tokens_show_their_bytes(models):
    text = "Café — naïve “quotes” → ok"
    s = lm.score(text, model="gpt2", logprobs=3, manager=models)
    tokenizer = models.backend("gpt2").tokenizer
    shown = [s.first] + [r.text for r in s.tokens]
    assert all("\ufffd" not in t for t in shown)
    assert any(t.startswith("\\x") for t in shown)  # a piece of a multi-byte character
    # The pieces put back together are the text's bytes.
    joined = "".join(shown).encode("latin-1", errors="backslashreplace").decode("unicode_escape")
    assert joined.encode("latin-1") == text.encode("utf-8")
    assert [r.id for r in s.tokens] == tokenizer(text)["input_ids"][1:]
    spaced = [t for t in shown if t.startswith(" ")]
    assert spaced and not any("Ġ" in t for t in shown)  # a leading space is a real space


def test_a_non_ascii_prompt_generates_readable_records(models):
    g = generate("naïve → café", model="gpt2", max_new_tokens=6, temperature=1.0, seed=4,
                 logprobs=5, manager=models)
    check_generation(models, g)
    texts = models.backend("gpt2").tokenizer.convert_ids_to_tokens
    for r in g.tokens:
        for token, text, _ in ((r.id, r.text, r.logprob), *r.top):
            assert "\ufffd" not in text
            raw = bytes(BYTES[ch] for ch in texts(token))
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                assert text.startswith("\\x") or "\\x" in text, text  # bytes, readably


# -- scoring ------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_score_matches_a_forward_pass(models, name):
    text = "The import statement binds a name in the local namespace."
    s = lm.score(text, model=name, logprobs=5, manager=models)
    ids = list(s.ids)
    assert ids == models.backend(name).tokenizer(text)["input_ids"]
    lp = forward(models, name, ids)
    check_against(s.tokens, lambda i: lp[i], ids[1:])
    assert len(s.tokens) == len(ids) - 1 and s.logprobs == 5 and s.logprobs_mode == "raw"
    assert s.logprob == pytest.approx(sum(r.logprob for r in s.tokens))
    expected = float(lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum())
    assert abs(s.logprob - expected) < TOL * len(ids)
    assert s.perplexity == pytest.approx(math.exp(-s.logprob / len(s.tokens)))
    assert "perplexity" in repr(s)


def test_score_refuses_one_token_and_long_texts(models):
    with pytest.raises(InvalidOptionError, match="at least two tokens.*1 token;"):
        lm.score("a", model="gpt2", manager=models)
    with pytest.raises(InvalidOptionError, match="empty"):
        lm.score("  ", model="gpt2", manager=models)
    text = "The import statement binds a name."
    n = len(models.backend("gpt2").tokenizer(text)["input_ids"])
    with pytest.raises(InvalidOptionError,
                       match=rf"{n} tokens, past the scoring cap of 3; its logits would take "
                             r"[\d.]+ [kKMG]?B in float32.*max_tokens="):
        lm.score(text, model="gpt2", max_tokens=3, manager=models)
    with pytest.raises(InvalidOptionError, match="max_tokens"):
        lm.score(text, model="gpt2", max_tokens=1, manager=models)


# -- branching -------------------------------------------------------------------------


def fork(models: ModelManager, g, position, token):
    return branch(g, position, token, manager=models)


def raw_continuation(models: ModelManager, name: str, ids: list[int], n: int,
                     **sampling) -> list[int]:
    backend = models.backend(name)
    if sampling.get("seed") is not None:
        torch.manual_seed(sampling.pop("seed"))
    sample = bool(sampling)
    with torch.inference_mode():
        out = backend.model.generate(
            input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=n, min_new_tokens=0, do_sample=sample,
            pad_token_id=backend.pad_id, eos_token_id=list(backend.eos_ids), **sampling,
        )
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize(("name", "sampling"), [
    ("gpt2", {}),
    ("llama", {}),
    ("demo", {}),
    ("gpt2", {"temperature": 0.9, "top_k": 30, "top_p": 0.95, "seed": 13}),
    ("llama", {"temperature": 1.2, "top_k": 50, "top_p": 1.0, "seed": 2}),
])
def test_a_branch_equals_a_raw_generate_from_the_same_ids(models, name, sampling):
    n, at = 12, 4
    g = generate("The import statement", model=name, max_new_tokens=n, logprobs=5,
                 manager=models, **sampling)
    alt = g.tokens[at].top[1][0]
    b = fork(models, g, at, alt)
    assert (b.parent, b.branch_at, b.prompt_ids) == (g.id, at, g.prompt_ids)
    kept = [r.id for r in g.tokens[:at]]
    assert [r.id for r in b.tokens[: at + 1]] == kept + [alt]
    assert b.tokens[:at] == g.tokens[:at]
    assert b.tokens[at].rank == 2 and b.tokens[at].logprob == g.tokens[at].top[1][2]
    expected = raw_continuation(models, name, list(g.prompt_ids) + kept + [alt], n - at - 1,
                                **sampling)
    assert [r.id for r in b.tokens[at + 1:]] == expected
    assert len(b.tokens) == n  # it ends where the original would
    tokenizer = models.backend(name).tokenizer
    assert b.text == tokenizer.decode(kept + [alt] + expected, skip_special_tokens=True)
    assert b.params == g.params
    check_generation_branch(models, b)
    again = fork(models, g, at, alt)  # same options and seed: the same branch
    assert [r.id for r in again.tokens] == [r.id for r in b.tokens]


def check_generation_branch(models: ModelManager, b) -> None:
    """A branch's records after its branch point match a forward pass over its ids too."""
    prompt = list(b.prompt_ids)
    ids = [r.id for r in b.tokens]
    lp = forward(models, b.model, prompt + ids)
    start = b.branch_at
    check_against(b.tokens[start:], lambda i: lp[len(prompt) + start + i - 1], ids[start:])


def test_branch_by_text_when_it_is_one_token(models):
    g = generate("The import statement", model="demo", max_new_tokens=8, logprobs=5,
                 manager=models)
    tokenizer = models.backend("demo").tokenizer
    alt_id, alt_text, _ = g.tokens[2].top[1]
    assert fork(models, g, 2, alt_text).tokens[2].id == alt_id  # an alternative's text
    outside = next(t for t in (" the", " import", " name", " a")
                   if len(tokenizer(t, add_special_tokens=False)["input_ids"]) == 1
                   and t not in {x for _, x, _ in g.tokens[2].top})
    (want,) = tokenizer(outside, add_special_tokens=False)["input_ids"]
    b = fork(models, g, 2, outside)  # not among the alternatives: scored on the spot
    assert b.tokens[2].id == want and b.tokens[2].text == outside
    lp = forward(models, "demo", list(g.prompt_ids) + [r.id for r in b.tokens])
    assert abs(b.tokens[2].logprob - float(lp[len(g.prompt_ids) + 1, want])) < TOL
    with pytest.raises(InvalidOptionError, match=r"is \d+ tokens .*not one; pass a single"):
        fork(models, g, 2, " the import statement binds")
    with pytest.raises(InvalidOptionError, match="token id or its text"):
        fork(models, g, 2, "")
    with pytest.raises(InvalidOptionError, match="token id or its text"):
        fork(models, g, 2, True)


def test_branch_position_must_be_in_range(models):
    g = generate("Hello", model="gpt2", max_new_tokens=5, logprobs=2, manager=models)
    for bad in (-1, 5, 99, True, "1", 1.0):
        with pytest.raises(InvalidOptionError, match="an integer from 0 to 4"):
            fork(models, g, bad, g.tokens[0].top[1][0])
    plain = generate("Hello", model="gpt2", max_new_tokens=3, manager=models)
    with pytest.raises(InvalidOptionError, match="no token records.*logprobs"):
        plain.branch(0, 1)
    vocab = models.backend("gpt2").model.config.vocab_size
    for bad in (-5, vocab, 10**6):  # an id outside the vocabulary is the user's mistake
        with pytest.raises(InvalidOptionError, match=rf"Token id {bad} is not in the "
                                                     rf"vocabulary.*0 to {vocab - 1}"):
            fork(models, g, 1, bad)


def test_branch_at_the_last_position_generates_nothing_more(models):
    g = generate("The import statement", model="llama", max_new_tokens=6, logprobs=3,
                 manager=models)
    alt = g.tokens[-1].top[2][0]
    b = fork(models, g, 5, alt)
    assert [r.id for r in b.tokens] == [r.id for r in g.tokens[:5]] + [alt]
    assert b.tokens[5].rank == 3 and b.branch_at == 5 and b.stats.new_tokens == 0
    tokenizer = models.backend("llama").tokenizer
    assert b.text == tokenizer.decode([r.id for r in b.tokens], skip_special_tokens=True)


def test_a_branch_of_a_branch(models):
    g = generate("The import statement", model="gpt2", max_new_tokens=8, logprobs=3,
                 manager=models)
    b = fork(models, g, 1, g.tokens[1].top[1][0])
    c = fork(models, b, 5, b.tokens[5].top[2][0])
    assert c.parent == b.id and c.branch_at == 5 and len(c.tokens) == 8
    assert [r.id for r in c.tokens[:5]] == [r.id for r in b.tokens[:5]]
    check_generation_branch(models, c)


# -- interrupts ------------------------------------------------------------------------


def check_partial(models: ModelManager, g) -> None:
    assert g.interrupted and g.tokens is not None
    assert 0 < len(g.tokens) == g.stats.new_tokens < 3000
    tokenizer = models.backend(g.model).tokenizer
    assert g.text == tokenizer.decode([r.id for r in g.tokens], skip_special_tokens=True)
    check_generation(models, g)


def test_a_stop_during_a_generation_keeps_records_of_the_partial_text(models):
    stop = threading.Event()
    pieces: list[str] = []

    def receive(piece: str) -> None:
        pieces.append(piece)
        if len(pieces) >= 5:
            stop.set()

    g = generate("Hello", model="long", max_new_tokens=3000, temperature=1.0, seed=3,
                 logprobs=5, stream=receive, stop_event=stop, manager=models)
    check_partial(models, g)
    assert g.text.startswith("".join(pieces))


def test_a_kernel_interrupt_keeps_records_of_the_partial_text(models):
    timer = threading.Timer(0.5, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            generate("Hello", model="long", max_new_tokens=3000, logprobs=3,
                     logprobs_mode="sampled", temperature=1.0, seed=8, manager=models)
    finally:
        timer.cancel()
    check_partial(models, models.last_generation)


# -- options ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, 21, -1, "5", True, 5.0])
def test_bad_k_is_refused_everywhere(models, bad):
    match = "logprobs is how many alternatives.*1 to 20"
    with pytest.raises(InvalidOptionError, match=match):
        generate("Hello", model="gpt2", logprobs=bad, manager=models)
    with pytest.raises(InvalidOptionError, match=match):
        generate_batch(["Hello", "A"], model="gpt2", logprobs=bad, manager=models)
    with pytest.raises(InvalidOptionError, match=match):
        lm.score("Hello there", model="gpt2", logprobs=bad, manager=models)


@pytest.mark.parametrize("mode", ["warped", "", None, "RAW"])
def test_bad_mode_is_refused(models, mode):
    with pytest.raises(InvalidOptionError, match="logprobs_mode must be 'raw'.*or 'sampled'"):
        generate("Hello", model="gpt2", logprobs=3, logprobs_mode=mode, manager=models)
    with pytest.raises(InvalidOptionError, match="logprobs_mode"):
        generate_batch(["Hello"], model="gpt2", logprobs=3, logprobs_mode=mode, manager=models)


def test_k_of_1_and_20_and_no_records_without_logprobs(models):
    one = generate("Hello", model="gpt2", max_new_tokens=3, logprobs=1, manager=models)
    assert all(len(r.top) == 1 for r in one.tokens)
    full = generate("Hello", model="gpt2", max_new_tokens=3, logprobs=20, manager=models)
    assert all(len(r.top) == 20 for r in full.tokens)
    assert [r.id for r in one.tokens] == [r.id for r in full.tokens]
    plain = generate("Hello", model="gpt2", max_new_tokens=3, manager=models)
    assert plain.tokens is None and plain.logprobs_mode is None


def test_the_public_calls_on_the_demo():
    from llm_magic.manager import get_manager

    manager = get_manager()
    loaded = manager.is_loaded("demo")
    lm.load("demo")
    try:
        g = lm.generate("The import statement", model="demo", max_new_tokens=6, logprobs=5)
        check_generation(manager, g)
        alt = g.tokens[3].top[1][0]
        b = g.branch(3, alt)  # the method, on the kernel's manager
        assert b.parent == g.id and b.branch_at == 3 and b.tokens[3].id == alt
        s = lm.score("The import statement binds a name.", model="demo", logprobs=2)
        lp = forward(manager, "demo", list(s.ids))
        check_against(s.tokens, lambda i: lp[i], list(s.ids[1:]))
    finally:
        if not loaded:
            lm.unload("demo")
