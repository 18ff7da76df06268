"""A padded batch on the transformers backend (``backends/_hf_batch``), against transformers."""

from __future__ import annotations

import pytest
import torch

from llm_magic.errors import LLMMagicWarning
from llm_magic.generation import generate_batch


@pytest.fixture
def gpt2(manager, tiny_gpt2):
    return manager.load(str(tiny_gpt2), name="gpt2")


def raw_batch_greedy(handle, prompts: list[str], n: int) -> list[str]:
    """The same prompts left-padded through plain ``model.generate``, cut at the end token."""
    model, tok = handle.model, handle.tokenizer
    side, pad = tok.padding_side, tok.pad_token_id
    tok.padding_side, tok.pad_token_id = "left", tok.eos_token_id
    try:
        enc = tok(prompts, return_tensors="pt", padding=True)
    finally:
        tok.padding_side, tok.pad_token_id = side, pad
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False,
                             pad_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    texts = []
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        ids = row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row
        texts.append(tok.decode(ids, skip_special_tokens=True))
    return texts


def test_batch_equals_a_plain_left_padded_generate(manager, gpt2):
    prompts = ["The import statement is", "A", "def f(x):"]
    side = gpt2.tokenizer.padding_side
    rows = generate_batch(prompts, max_new_tokens=6, chat=False, manager=manager)
    assert [g.text for g in rows] == raw_batch_greedy(gpt2, prompts, 6)
    assert [g.stats.prompt_tokens for g in rows] == [
        len(gpt2.tokenizer(p)["input_ids"]) for p in prompts]
    assert gpt2.tokenizer.padding_side == side  # the batch's left padding is undone


def test_a_batch_capped_to_the_context_warns_at_the_callers_line(manager, gpt2):
    prompt = "The import statement "
    while len(gpt2.tokenizer(prompt + "The ")["input_ids"]) < 110:
        prompt += "The "
    n = len(gpt2.tokenizer(prompt)["input_ids"])
    with pytest.warns(LLMMagicWarning, match=f"Only {128 - n} new tokens fit") as caught:
        rows = generate_batch([prompt, "A"], max_new_tokens=100, chat=False, manager=manager)
    assert caught[0].filename == __file__  # the caller's line, not llm_magic's
    assert all(g.stats.new_tokens <= 128 - n for g in rows)
