"""Conversations: every turn, computed from the kept cache, equals a run without one.

Each turn's new token ids are checked against ``model.generate`` on the same
rendered ids with no cache given (float32, greedy), over ten turns, on GPT-2
(learned positions), Llama (rotary), Mistral with a sliding window shorter
than the conversation, Gemma 2 (hybrid cache, soft-capping) and a model whose
template re-renders earlier turns.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import pytest
import torch
from _models import build_tokenizer

import llm_magic as lm
from llm_magic.errors import (
    BudgetExceededError,
    ConversationBusyError,
    InvalidOptionError,
    ModelNotLoadedError,
    PromptTooLongError,
)

#: A template that shows only the last reply in full: earlier ones are cut to 4 characters,
#: so each turn re-renders the previous reply differently (as templates that strip earlier
#: reasoning do).
RERENDER_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>"
    "{% if m['role'] == 'assistant' and not loop.last %}{{ m['content'][:4] }}"
    "{% else %}{{ m['content'] }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
PLAIN_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
QUESTIONS = ["What is a list?", "def add(a, b):", "And a dict?", "import os", "class Foo:",
             "Why?", "for i in range(3):", "print('hi')", "return x", "The end."]


def _build(out: Path, arch: str, template: str | None = None) -> Path:
    from transformers import (
        Gemma2Config,
        Gemma2ForCausalLM,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
    )

    tok = build_tokenizer(out, 512, template)
    eos = tok.eos_token_id
    torch.manual_seed(0)
    common = dict(vocab_size=len(tok), bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=1024,
                                           **common))
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, **common))
    elif arch == "mistral":
        model = MistralForCausalLM(MistralConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, sliding_window=24, **common))
    else:
        model = Gemma2ForCausalLM(Gemma2Config(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=1024, sliding_window=24,
            query_pre_attn_scalar=8, **common))
    model.generation_config.pad_token_id = eos
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("conversation-models")
    return {
        "gpt2": _build(root / "gpt2", "gpt2"),
        "llama": _build(root / "llama", "llama", PLAIN_TEMPLATE),
        "mistral": _build(root / "mistral", "mistral"),
        "gemma2": _build(root / "gemma2", "gemma2", PLAIN_TEMPLATE),
        "rerender": _build(root / "rerender", "llama", RERENDER_TEMPLATE),
    }


def _reference(backend, gen: lm.Generation) -> list[int]:
    """The same prompt ids through transformers' generate, with no cache given."""
    ids = torch.tensor([list(gen.prompt_ids)])
    with torch.inference_mode():
        out = backend.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     do_sample=False, max_new_tokens=gen.stats.new_tokens,
                                     min_new_tokens=gen.stats.new_tokens,
                                     pad_token_id=backend.pad_id)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("arch", ["gpt2", "llama", "mistral", "gemma2", "rerender"])
def test_ten_turns_equal_runs_without_a_cache(models, manager, arch):
    manager.load(str(models[arch]), name=arch, dtype="float32")
    backend = manager.backend(arch)
    conv = lm.chat(model=arch, manager=manager, max_new_tokens=12, logprobs=1)
    reused, notes = [], []
    for number, question in enumerate(QUESTIONS):
        gen = conv.say(question)
        notes.append(gen.stats.cache_note)
        assert gen.conversation == conv.id and gen.turn == number
        ids = [r.id for r in gen.tokens]
        assert ids == _reference(backend, gen)[: len(ids)], f"turn {number} differs"
        reused.append(gen.stats.reused_tokens)
        if gen.stats.reused_tokens == 0 and number:  # only a window that cannot rewind
            assert arch in ("mistral", "gemma2") and "sliding-window" in notes[-1]
        kept = backend.kept.get(conv.id)
        assert kept is not None and kept.ids == list(gen.prompt_ids + tuple(ids))[: len(kept.ids)]
    assert reused[0] == 0 and sum(n > 0 for n in reused[1:]) >= 3
    assert len(conv.turns) == 10 and len(conv.messages) == 20
    if arch == "rerender":  # the previous reply re-renders cut: the cache is cropped before it
        assert all(t.reused < t.prompt_tokens - 4 for t in conv.turns[1:])


def test_the_kept_cache_is_counted_and_sized(models, manager):
    manager.load(str(models["llama"]), name="llama", dtype="float32")
    backend = manager.backend("llama")
    conv = lm.chat(model="llama", manager=manager, max_new_tokens=10)
    for question in QUESTIONS[:4]:
        conv.say(question)
    tokens = len(backend.kept.get(conv.id).ids)
    config = backend.model.config
    expected = (config.num_hidden_layers * 2 * tokens * config.num_key_value_heads
                * (config.hidden_size // config.num_attention_heads) * 4)
    assert abs(conv.cache_bytes - expected) <= 0.05 * expected
    assert manager.info("llama").cache == conv.cache_bytes
    assert "cache" in str(manager.models())
    assert conv.name in str(lm.conversations(manager=manager))
    from llm_magic.manager.room import residents

    memory = manager.info("llama").memory
    assert dict(residents(manager)[0].memory)["cpu"] == memory + conv.cache_bytes
    held = conv.cache_bytes
    assert conv.forget() == held
    assert backend.kept_bytes() == 0 and conv.name not in str(lm.conversations(manager=manager))


def test_interrupt_keeps_the_partial_turn_and_the_next_turn_is_exact(models, manager):
    manager.load(str(models["gpt2"]), name="gpt2", dtype="float32")
    backend = manager.backend("gpt2")
    conv = lm.chat(model="gpt2", manager=manager, max_new_tokens=40, logprobs=1)
    conv.say(QUESTIONS[0])
    stop = threading.Event()
    calls = []

    def count(module, args, output):  # the stop lands inside the 4th forward, mid-layers
        calls.append(1)
        if len(calls) == 3:
            stop.set()

    handle = backend.model.transformer.h[0].register_forward_hook(count)
    try:
        stopped = conv.say(QUESTIONS[1], stop_event=stop)
    finally:
        handle.remove()
    assert stopped.interrupted and 0 < stopped.stats.new_tokens < 40
    assert conv.messages[-1].get("interrupted") is True
    assert conv.messages[-1]["content"] == stopped.text
    assert conv.turns[-1].interrupted and len(conv.turns) == 2
    gen = conv.say(QUESTIONS[2], max_new_tokens=12)
    ids = [r.id for r in gen.tokens]
    assert ids == _reference(backend, gen)[: len(ids)]


def test_conversation_cache_is_dropped_before_a_model_is_evicted(models, manager, tiny_gpt2):
    manager.load(str(models["llama"]), name="llama", dtype="float32")
    conv = lm.chat(model="llama", manager=manager, max_new_tokens=10)
    for question in QUESTIONS[:3]:
        conv.say(question)
    cache = conv.cache_bytes
    assert cache > 0
    used = manager.info("llama").memory + cache
    estimate = lm.estimate(str(tiny_gpt2), dtype="float32").memory
    lm.budget(manager=manager, cpu=used + estimate - cache // 2)
    try:
        manager.load(str(tiny_gpt2), name="other", dtype="float32")
        assert manager.is_loaded("llama"), "the model was evicted before its conversation cache"
        assert conv.cache_bytes == 0
        manager.limits.clear()
        gen = conv.say("Again?")
        assert "dropped under memory pressure" in gen.stats.cache_note
        assert "dropped under memory pressure" in str(gen.stats)
        assert gen.stats.reused_tokens == 0
    finally:
        manager.limits.clear()


def test_a_turn_larger_than_the_budget_is_refused_with_nothing_lost(models, manager):
    manager.load(str(models["gpt2"]), name="gpt2", dtype="float32")
    conv = lm.chat(model="gpt2", manager=manager, max_new_tokens=8)
    conv.say("Hello")
    before = conv.messages
    lm.budget(manager=manager, cpu=manager.info("gpt2").memory + conv.cache_bytes + 10)
    try:
        with pytest.raises(BudgetExceededError, match="budget"):
            conv.say("A longer message that needs more cache than the budget leaves " * 3,
                     max_new_tokens=200)
    finally:
        manager.limits.clear()
    assert conv.messages == before


def test_context_full_is_refused_or_trimmed(models, manager):
    manager.load(str(models["gpt2"]), name="gpt2", dtype="float32")
    backend = manager.backend("gpt2")
    backend.context_length = 120
    conv = lm.chat(model="gpt2", manager=manager, max_new_tokens=16)
    with pytest.raises(PromptTooLongError, match="trim='oldest'"), warnings.catch_warnings():
        warnings.simplefilter("ignore", lm.LLMMagicWarning)  # "only N new tokens fit"
        for question in QUESTIONS:
            conv.say(question * 2)
    kept = len(conv.turns)
    assert kept >= 1 and len(conv.messages) == 2 * kept
    conv.trim = "oldest"
    with pytest.warns(lm.LLMMagicWarning, match="dropped its"):
        gen = conv.say(QUESTIONS[0] * 2)
    assert gen.stats.prompt_tokens + 1 <= 120
    assert len(conv.turns) == kept + 1


def test_two_turns_on_one_conversation_never_interleave(models, manager):
    manager.load(str(models["gpt2"]), name="gpt2", dtype="float32")
    conv = lm.chat(model="gpt2", manager=manager, max_new_tokens=30)
    started, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def slow(text: str) -> None:
        started.set()
        release.wait(5)

    def first() -> None:
        try:
            conv.say("one", stream=slow)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    worker = threading.Thread(target=first)
    worker.start()
    assert started.wait(10)
    with pytest.raises(ConversationBusyError, match="another turn"):
        conv.say("two")
    with pytest.raises(ConversationBusyError):
        conv.undo()
    release.set()
    worker.join(10)
    assert not errors and len(conv.turns) == 1


def test_fork_and_undo(models, manager):
    manager.load(str(models["llama"]), name="llama", dtype="float32")
    backend = manager.backend("llama")
    conv = lm.chat(model="llama", manager=manager, max_new_tokens=8, logprobs=1)
    conv.say(QUESTIONS[0])
    conv.say(QUESTIONS[1])
    twin = conv.fork("twin")
    assert twin.messages == conv.messages and twin.cache_bytes == conv.cache_bytes
    a = conv.say(QUESTIONS[2])
    b = twin.say(QUESTIONS[2])
    assert [r.id for r in a.tokens] == [r.id for r in b.tokens]
    assert b.stats.reused_tokens == a.stats.reused_tokens > 0
    conv.undo()
    assert len(conv.messages) == 4 and len(conv.turns) == 2
    c = conv.say(QUESTIONS[3])
    ids = [r.id for r in c.tokens]
    assert ids == _reference(backend, c)[: len(ids)]


def test_unload_frees_the_caches_and_a_turn_then_says_what_to_do(models, manager):
    manager.load(str(models["gpt2"]), name="gpt2", dtype="float32")
    conv = lm.chat(model="gpt2", manager=manager, max_new_tokens=8)
    conv.say("Hello")
    backend = manager.backend("gpt2")
    manager.unload("gpt2")
    assert backend.kept is None or len(backend.kept) == 0
    with pytest.raises(ModelNotLoadedError, match="no longer loaded"):
        conv.say("Still there?")
    manager.load(str(models["gpt2"]), name="gpt2", dtype="float32")
    gen = conv.say("Still there?")
    assert "loaded again" in gen.stats.cache_note and gen.stats.reused_tokens == 0
    assert len(conv.turns) == 2


def test_plain_transcript_for_a_model_without_a_template(models, manager):
    manager.load(str(models["gpt2"]), name="gpt2", dtype="float32")
    conv = lm.chat(model="gpt2", system="Be brief.", manager=manager, max_new_tokens=6)
    gen = conv.say("Hi")
    text = manager.backend("gpt2").tokenizer.decode(list(gen.prompt_ids))
    assert text == "Be brief.\nUser: Hi\nAssistant:"
    assert "\nUser:" in gen.params["stop"]
    assert gen.params["messages"] == [["system", "Be brief."], ["user", "Hi"]]


@pytest.mark.parametrize("bad, match", [
    (dict(text=""), "empty"),
    (dict(text="   "), "blank|empty"),
    (dict(text=3), "string"),
    (dict(text="x", temperature=float("nan")), "temperature"),
    (dict(text="x", max_new_tokens=True), "max_new_tokens"),
    (dict(text="x", colour="red"), "Unknown option"),
])
def test_bad_turns_are_refused_with_nothing_lost(models, manager, bad, match):
    manager.load(str(models["gpt2"]), name="gpt2", dtype="float32")
    conv = lm.chat(model="gpt2", manager=manager, max_new_tokens=4)
    conv.say("Hello")
    before = conv.messages
    text = bad.pop("text")
    with pytest.raises(InvalidOptionError, match=match):
        conv.say(text, **bad)
    assert conv.messages == before


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="<b>x</b>"), "name"),
    (dict(name=""), "name"),
    (dict(trim="newest"), "trim"),
    (dict(top_k=0), "top_k"),
])
def test_bad_conversations_are_refused(models, manager, kwargs, match):
    manager.load(str(models["gpt2"]), name="gpt2", dtype="float32")
    with pytest.raises(InvalidOptionError, match=match):
        lm.chat(model="gpt2", manager=manager, **kwargs)


def test_undo_without_turns_and_forget_unknown(models, manager):
    manager.load(str(models["gpt2"]), name="gpt2", dtype="float32")
    conv = lm.chat(model="gpt2", manager=manager)
    with pytest.raises(InvalidOptionError, match="no turn"):
        conv.undo()
    from llm_magic.generation.conversation import forget

    with pytest.raises(InvalidOptionError, match="No conversation named"):
        forget("nope", manager=manager)


def test_a_branch_of_a_turn_forks_the_conversation(models, manager):
    manager.load(str(models["llama"]), name="llama", dtype="float32")
    backend = manager.backend("llama")
    conv = lm.chat(model="llama", manager=manager, max_new_tokens=8, logprobs=3)
    conv.say(QUESTIONS[0])
    turn = conv.say(QUESTIONS[1])
    conv.say(QUESTIONS[2])
    alt = turn.tokens[2].top[1][0]
    branched = turn.branch(2, alt, manager=manager)
    assert branched.conversation not in (None, conv.id) and branched.turn == 1
    from llm_magic.generation.conversation import conversations

    fork = next(c for c in conversations(manager=manager) if c.id == branched.conversation)
    assert len(conv.turns) == 3 and len(fork.turns) == 2
    assert fork.messages[:2] == conv.messages[:2]
    assert fork.messages[-1]["content"] == branched.text
    assert [r.id for r in branched.tokens[:3]] == [turn.tokens[0].id, turn.tokens[1].id, alt]
    nxt = fork.say(QUESTIONS[3])  # the fork goes on, exactly
    ids = [r.id for r in nxt.tokens]
    assert ids == _reference(backend, nxt)[: len(ids)]


def test_attention_and_the_lens_read_a_turn_with_the_whole_conversation(models, manager):
    manager.load(str(models["gpt2"]), name="gpt2", dtype="float32")
    conv = lm.chat(model="gpt2", manager=manager, max_new_tokens=6, logprobs=2)
    conv.say(QUESTIONS[0])
    turn = conv.say(QUESTIONS[1], attention=True)
    total = len(turn.prompt_ids) + len(turn.tokens)
    assert turn.attention.shape[2] == total and turn.stats.reused_tokens > 0
    lens = lm.logit_lens(turn, manager=manager)
    assert lens.shape[1] == total


def test_a_conversation_on_a_quantized_model_is_exact(manager):
    handle = manager.load("demo", quantize="int8")
    backend = manager.backend(handle.name)
    conv = lm.chat(model=handle.name, manager=manager, max_new_tokens=8, logprobs=1)
    conv.say(QUESTIONS[1])
    gen = conv.say(QUESTIONS[3])
    assert gen.stats.reused_tokens > 0
    ids = [r.id for r in gen.tokens]
    assert ids == _reference(backend, gen)[: len(ids)]
