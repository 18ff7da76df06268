"""The bundled demo model: shipped files, offline loading, English output, reproducible training."""

from __future__ import annotations

import collections
import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llm_magic.demo import MODEL_DIR

PROMPT = "The import statement"
SHIPPED = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "README.md",
)
MAX_WEIGHT_BYTES = 10_000_000


# --------------------------------------------------------------------------- helpers


def _known_words() -> frozenset[str]:
    """Lower-case words used at least twice in Python's language reference (pydoc topics)."""
    import pydoc_data.topics

    counts = collections.Counter(
        word
        for text in pydoc_data.topics.topics.values()
        for word in re.findall(r"[a-z]+", text.lower())
    )
    return frozenset(w for w, n in counts.items() if n >= 2 and (len(w) >= 2 or w == "a"))


def _english_report(text: str, known: frozenset[str]) -> tuple[int, int, float, int]:
    """``(words, distinct words, share of known words, longest run of one word)`` of ``text``.

    A word is a maximal run of letters, so sub-word pieces glued together by random tokens
    ("ementrowsibly") count as one unknown word.
    """
    words = [w.lower() for w in re.findall(r"[A-Za-z]+", text)]
    if not words:
        return 0, 0, 0.0, 0
    run = max(len(list(group)) for _, group in itertools.groupby(words))
    return len(words), len(set(words)), sum(w in known for w in words) / len(words), run


def _reads_as_english(text: str, known: frozenset[str]) -> bool:
    """At least 8 words, 5 different ones, 80 % known words, no word 3 times in a row.

    Random tokens glue into unknown words (at most about 65 % known); an untrained model
    repeats one token ("statement statement statement ...").
    """
    words, distinct, share, run = _english_report(text, known)
    return words >= 8 and distinct >= 5 and share >= 0.8 and run <= 2


def _greedy(model, tokenizer, new_tokens: int = 30) -> str:
    import torch

    inputs = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + new_tokens
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.fixture(scope="module")
def known() -> frozenset[str]:
    return _known_words()


@pytest.fixture(scope="module")
def demo(request: pytest.FixtureRequest):
    """The shipped model and tokenizer, loaded offline."""
    mp = pytest.MonkeyPatch()
    request.addfinalizer(mp.undo)
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR)
    model.eval()
    return model, tokenizer


# --------------------------------------------------------------------------- shipped files


def test_shipped_files_exist():
    for name in SHIPPED:
        assert (MODEL_DIR / name).is_file(), name
    assert (MODEL_DIR / "model.safetensors").stat().st_size <= MAX_WEIGHT_BYTES


def test_importing_the_demo_package_is_cheap():
    code = ("import sys, llm_magic.demo\n"
            "print([m for m in ('torch', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_model_card_reports_the_run():
    card = (MODEL_DIR / "README.md").read_text(encoding="utf-8")
    for needle in ("python -m llm_magic.demo.train", "validation loss", "PSF", PROMPT):
        assert needle in card, needle


# --------------------------------------------------------------------------- loading, English


def test_loads_offline_as_gpt2(demo):
    model, tokenizer = demo
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert tokenizer.is_fast
    assert tokenizer.chat_template is None
    eos = tokenizer.eos_token_id
    assert eos is not None and tokenizer.pad_token_id == eos
    assert model.generation_config.eos_token_id == eos
    assert model.generation_config.pad_token_id == eos
    assert model.config.vocab_size == len(tokenizer)


def test_greedy_continuation_reads_as_english(demo, known):
    model, tokenizer = demo
    text = _greedy(model, tokenizer)
    assert _reads_as_english(text, known), (text, _english_report(text, known))


def test_random_weights_fail_the_english_check(demo, known):
    """The check is meaningful: the same architecture, untrained, does not pass it."""
    import torch
    from transformers import AutoModelForCausalLM

    model, tokenizer = demo
    for seed in range(3):
        torch.manual_seed(seed)
        untrained = AutoModelForCausalLM.from_config(model.config).eval()
        text = _greedy(untrained, tokenizer)
        assert not _reads_as_english(text, known), (seed, text)


def test_random_tokens_fail_the_english_check(demo, known):
    import torch

    _, tokenizer = demo
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        ids = torch.randint(0, len(tokenizer), (30,), generator=generator).tolist()
        text = tokenizer.decode(ids, skip_special_tokens=True)
        assert not _reads_as_english(text, known), text


def test_the_check_accepts_documentation_prose(known):
    prose = ("The import statement combines two operations; it searches for the named module, "
             "then it binds the results of that search to a name in the local scope.")
    assert _reads_as_english(prose, known)


# --------------------------------------------------------------------------- training script


def test_corpus_split_is_deterministic_and_small():
    from llm_magic.demo.train import build_corpus, split_corpus

    chunks = build_corpus(limit=200_000)
    assert chunks == build_corpus(limit=200_000)
    train, val = split_corpus(chunks)
    assert len(train) + len(val) == len(chunks)
    assert 0.03 < sum(map(len, val)) / sum(map(len, chunks)) < 0.08


def _tiny_run(out: Path, seed: int):
    from llm_magic.demo.train import train

    return train(out, steps=3, seed=seed, threads=1, n_layer=1, n_embd=32, n_head=2, context=32,
                 batch_size=4, vocab_size=384, corpus_limit=30_000)


def test_training_is_reproducible(tmp_path: Path):
    from safetensors.torch import load_file

    first = _tiny_run(tmp_path / "a", seed=0)
    again = _tiny_run(tmp_path / "b", seed=0)
    other = _tiny_run(tmp_path / "c", seed=1)
    weights = {k: load_file(str(tmp_path / k / "model.safetensors")) for k in "abc"}
    assert weights["a"].keys() == weights["b"].keys() == weights["c"].keys()
    for name, tensor in weights["a"].items():
        assert tensor.equal(weights["b"][name]), name
    assert any(not t.equal(weights["c"][n]) for n, t in weights["a"].items())
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == \
        (tmp_path / "b" / "tokenizer.json").read_bytes()
    assert first.val_loss == again.val_loss and first.val_loss != other.val_loss
    assert first.greedy == again.greedy
    for name in SHIPPED:
        assert (tmp_path / "a" / name).is_file(), name
