"""The generation path on real (tiny, random) transformers models."""

from __future__ import annotations

import _thread
import threading
import time

import pytest
import torch

from llm_magic import generation
from llm_magic.errors import (
    BackendError,
    InvalidOptionError,
    LLMMagicWarning,
    ModelNotLoadedError,
    PromptTooLongError,
)
from llm_magic.generation import generate, generate_batch


@pytest.fixture
def gpt2(manager, tiny_gpt2):
    return manager.load(str(tiny_gpt2), name="gpt2")


@pytest.fixture
def llama(manager, tiny_llama):
    return manager.load(str(tiny_llama), name="llama")


@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    """A tiny model with a long context and an end token it can never emit.

    A generation on it runs until stopped, so interrupts are tested mid-stream.
    """
    import json

    from _models import build_tiny_model

    out = build_tiny_model(tmp_path_factory.mktemp("long"), arch="llama", context=8192)
    for name in ("config.json", "generation_config.json"):
        config = json.loads((out / name).read_text())
        config["eos_token_id"] = 10**6  # outside the vocabulary
        (out / name).write_text(json.dumps(config))
    return out


def raw_greedy(handle, prompt: str, n: int) -> str:
    model, tok = handle.model, handle.tokenizer
    ids = tok(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False,
                             pad_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize("fixture", ["gpt2", "llama"])
def test_streamed_greedy_equals_plain_and_raw_generate(request, manager, fixture):
    handle = request.getfixturevalue(fixture)
    plain = generate("The import statement", model=handle.name, max_new_tokens=24,
                     chat=False, manager=manager)
    pieces: list[str] = []
    streamed = generate("The import statement", model=handle.name, max_new_tokens=24,
                        chat=False, stream=pieces.append, manager=manager)
    assert plain.text == streamed.text == "".join(pieces)
    expected = raw_greedy(handle, "The import statement", 24)
    if plain.stats.stop_reason == "length":
        assert plain.text == expected
    else:
        assert expected.startswith(plain.text)
    assert plain.stats.prompt_tokens == len(handle.tokenizer("The import statement")["input_ids"])
    assert plain.stats.new_tokens <= 24
    assert plain.model == handle.name and plain.prompt == "The import statement"


def test_stats_are_filled(manager, gpt2):
    g = generate("A for loop", max_new_tokens=10, manager=manager)
    s = g.stats
    assert s.new_tokens == 10 and s.stop_reason in {"length", "eos"}
    assert 0 < s.time_to_first_token <= s.duration
    assert s.tokens_per_second == pytest.approx(s.new_tokens / s.duration)
    assert manager.last_generation is g
    # the footer says why it ended in words, not a code like "(length)"
    assert str(s).endswith(f"({s.stopped})") and s.stopped in {
        "reached the token limit", "the model ended the text"}


def test_same_seed_same_sample_other_seed_differs(manager, gpt2):
    kw = dict(max_new_tokens=30, temperature=1.0, top_p=0.95, top_k=100, manager=manager)
    a = generate("The import statement", seed=7, **kw)
    b = generate("The import statement", seed=7, **kw)
    c = generate("The import statement", seed=8, **kw)
    assert a.text == b.text
    assert a.text != c.text


@pytest.mark.parametrize("fixture", ["gpt2", "llama"])
def test_stop_string_cuts_text_and_stream(request, manager, fixture):
    request.getfixturevalue(fixture)
    full = generate("class", max_new_tokens=40, chat=False, manager=manager).text
    # a stop string whose first occurrence is well inside the greedy continuation
    stop = next(full[i : i + 2] for i in range(4, len(full) - 2)
                if full.index(full[i : i + 2]) == i)
    pieces: list[str] = []
    g = generate("class", max_new_tokens=40, stop=[stop, "never-there"], stream=pieces.append,
                 chat=False, manager=manager)
    assert len(g.text) >= 4
    assert g.text == full[: full.index(stop)]
    assert "".join(pieces) == g.text
    assert g.stats.stop_reason == "stop"
    assert g.stats.new_tokens < 40


def test_chat_template_is_used_when_present(manager, llama):
    with_chat = generate("Hello", max_new_tokens=4, manager=manager)
    without = generate("Hello", max_new_tokens=4, chat=False, manager=manager)
    with_system = generate("Hello", max_new_tokens=4, system="Be brief.", manager=manager)
    assert with_chat.stats.prompt_tokens > without.stats.prompt_tokens
    assert with_system.stats.prompt_tokens > with_chat.stats.prompt_tokens
    rendered, templated = manager.backend("llama").render_prompt(
        generation.make_request("Hello", system="Be brief.")
    )
    assert templated and "<|system|>Be brief." in rendered and rendered.endswith("<|assistant|>")


def test_chat_on_a_model_without_template_is_a_clear_error(manager, gpt2):
    with pytest.raises(InvalidOptionError, match="no chat template"):
        generate("Hello", chat=True, manager=manager)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (dict(prompt=""), "empty"),
        (dict(prompt="   \n"), "empty"),
        (dict(prompt=3), "string"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=True), "max_new_tokens"),
        (dict(max_new_tokens=2.5), "max_new_tokens"),
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=0), "top_k"),
        (dict(seed=-1), "seed"),
        (dict(stop=[""]), "Stop"),
        (dict(chat="yes"), "chat"),
    ],
)
def test_bad_options_raise_and_change_nothing(manager, gpt2, options, match):
    before = manager.models()
    last = manager.last_generation
    kwargs = {"prompt": "Hello", **options}
    prompt = kwargs.pop("prompt")
    with pytest.raises(InvalidOptionError, match=match):
        generate(prompt, manager=manager, **kwargs)
    assert [m.name for m in manager.models()] == [m.name for m in before]
    assert manager.last_generation is last


def test_attention_is_attached_only_when_asked(manager, gpt2):
    assert generate("Hello", max_new_tokens=2, manager=manager).attention is None
    gen = generate("Hello", max_new_tokens=2, attention=True, manager=manager)
    assert gen.attention.shape[2] == gen.stats.prompt_tokens + gen.stats.new_tokens


def test_unknown_model_and_no_model(manager):
    with pytest.raises(ModelNotLoadedError, match="No model is loaded"):
        generate("Hello", manager=manager)
    with pytest.raises(ModelNotLoadedError, match="nope"):
        generate("Hello", model="nope", manager=manager)


def test_prompt_longer_than_context(manager, gpt2):
    with pytest.raises(PromptTooLongError, match="at most 128"):
        generate("word " * 400, manager=manager)
    assert generate("Hello", max_new_tokens=2, manager=manager).stats.new_tokens == 2


def test_new_tokens_are_capped_to_the_context_with_a_warning(manager, gpt2):
    prompt = "The import statement "
    while len(gpt2.tokenizer(prompt + "The ")["input_ids"]) < 110:
        prompt += "The "
    n = len(gpt2.tokenizer(prompt)["input_ids"])
    with pytest.warns(LLMMagicWarning, match=f"Only {128 - n} new tokens fit"):
        g = generate(prompt, max_new_tokens=100, manager=manager)
    assert g.stats.new_tokens <= 128 - n


def test_worker_exception_comes_back(manager, gpt2, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom in the worker")

    monkeypatch.setattr(gpt2.model, "generate", broken)
    with pytest.raises(BackendError, match="boom in the worker") as info:
        generate("Hello", manager=manager)
    assert isinstance(info.value.__cause__, RuntimeError)
    monkeypatch.undo()
    assert not [t for t in threading.enumerate() if t.name.startswith("llm_magic-")]
    assert generate("Hello", max_new_tokens=3, manager=manager).stats.new_tokens == 3


def _workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("llm_magic-") and t.is_alive()]


def test_a_stream_receiver_that_raises_stops_the_worker_and_keeps_the_text(manager, long_model):
    manager.load(str(long_model), name="long")
    ended = []
    manager.events.subscribe(ended.append, kinds={"generation_end"})
    pieces: list[str] = []

    def receiver(text: str) -> None:
        pieces.append(text)
        if len("".join(pieces)) > 20:
            raise ValueError("the receiver broke")

    with pytest.raises(ValueError, match="the receiver broke"):
        generate("Hello", max_new_tokens=6000, stream=receiver, manager=manager)
    assert not _workers()
    partial = manager.last_generation
    assert partial is not None and partial.stats.stop_reason == "error"
    assert 0 < partial.stats.new_tokens < 6000 and partial.text.startswith("".join(pieces))
    assert [e.data["error"] for e in ended] == ["the receiver broke"]
    assert generate("Hello", max_new_tokens=3, manager=manager).stats.new_tokens == 3


def test_keyboard_interrupt_stops_the_worker_and_keeps_the_text(manager, long_model):
    manager.load(str(long_model), name="long")
    fired: list[float] = []

    def interrupt() -> None:
        fired.append(time.perf_counter())
        _thread.interrupt_main()

    timer = threading.Timer(0.6, interrupt)
    pieces: list[str] = []
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            generate("Hello", max_new_tokens=6000, stream=pieces.append, manager=manager)
    finally:
        stopped = time.perf_counter()
        timer.cancel()
    assert fired and stopped - fired[0] < 0.5
    assert not _workers()
    partial = manager.last_generation
    assert partial is not None and partial.interrupted and partial.model == "long"
    assert 0 < partial.stats.new_tokens < 6000
    assert partial.text.startswith("".join(pieces)[:10])
    again = generate("Hello", max_new_tokens=3, manager=manager)
    assert again.stats.new_tokens == 3


def test_stop_event_stops_like_a_button(manager, long_model):
    manager.load(str(long_model), name="long")
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    t0 = time.perf_counter()
    g = generate("Hello", max_new_tokens=6000, stop_event=stop, manager=manager)
    assert time.perf_counter() - t0 < 1.5
    assert g.interrupted and 0 < g.stats.new_tokens < 6000
    assert not _workers()


def test_generations_on_one_model_never_interleave(manager, long_model, tiny_gpt2):
    manager.load(str(long_model), name="long")
    manager.load(str(tiny_gpt2), name="gpt2")
    spans: dict[str, list[tuple[float, float]]] = {}
    lock = threading.Lock()

    def run(model: str, key: str) -> None:
        t0 = time.perf_counter()
        generate("Hello", model=model, max_new_tokens=120, manager=manager)
        with lock:
            spans.setdefault(key, []).append((t0, time.perf_counter()))

    starts: list[tuple[str, float]] = []
    manager.events.subscribe(lambda e: starts.append((e.model, time.perf_counter())),
                             kinds={"generation_start"})
    ends: list[tuple[str, float]] = []
    manager.events.subscribe(lambda e: ends.append((e.model, time.perf_counter())),
                             kinds={"generation_end"})
    threads = [threading.Thread(target=run, args=("long", f"a{i}")) for i in range(2)]
    threads.append(threading.Thread(target=run, args=("gpt2", "b")))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    long_starts = [t for m, t in starts if m == "long"]
    long_ends = [t for m, t in ends if m == "long"]
    # the second generation on "long" starts only after the first has ended
    assert len(long_starts) == 2 and long_starts[1] >= long_ends[0]


def test_batch_matches_single_greedy_and_trims_stops(manager, llama):
    prompts = ["Hello", "The import statement is", "A"]
    batch = generate_batch(prompts, max_new_tokens=8, chat=False, manager=manager)
    singles = [generate(p, max_new_tokens=8, chat=False, manager=manager) for p in prompts]
    assert [g.text for g in batch] == [g.text for g in singles]
    assert [g.prompt for g in batch] == prompts
    with pytest.raises(InvalidOptionError):
        generate_batch([], manager=manager)
    with pytest.raises(InvalidOptionError, match="empty"):
        generate_batch(["ok", ""], manager=manager)


def test_the_start_event_carries_the_model_facts_and_progress(manager, gpt2, tiny_gpt2):
    seen: list[tuple[object, str, int]] = []

    def record(event) -> None:
        pending = event.data["generation"]
        assert isinstance(pending, generation.PendingGeneration)
        seen.append((pending, *pending.progress()))

    progress: list[tuple[str, int]] = []
    stop = manager.events.subscribe(record, kinds={"generation_start"})
    try:
        g = generate("Hello", max_new_tokens=12, manager=manager,
                     stream=lambda text: progress.append(seen[0][0].progress()))
    finally:
        stop()
    pending, text, tokens = seen[0]
    # the history store, listening too, gave the generation its row
    assert (text, tokens) == ("", 0) and isinstance(g.id, int) and g.id == pending.id
    assert pending.info.source == str(tiny_gpt2) and pending.info.device == "cpu"
    assert pending.request.max_new_tokens == 12 and pending.prompt == "Hello"
    assert progress and progress[-1][1] <= g.stats.new_tokens
    assert all(g.text.startswith(t) for t, _ in progress)


def test_the_first_streamed_piece_does_not_wait_for_the_poll(manager, monkeypatch):
    """The worker wakes the caller until text shows: with the drain's poll interval set to
    an hour, the first text still reaches the stream while the model is held mid-generation
    (and the rest arrives when the worker ends). The demo model writes whole characters,
    which a random one may not."""
    from llm_magic.generation import stream

    manager.load("demo", name="gpt2")
    monkeypatch.setattr(stream, "POLL", 3600.0)
    got, release = [], threading.Event()
    model = manager.backend("gpt2").model
    calls = []

    def hold(_module, _args, _output):  # the 3rd forward waits until the first piece is seen
        calls.append(1)
        if len(calls) == 4:
            assert release.wait(30), "the first streamed piece never reached the sink"

    def sink(text):
        got.append(text)
        release.set()

    handle = model.transformer.h[0].register_forward_hook(hold)
    try:
        g = generate("The import statement", model="gpt2", max_new_tokens=6, stream=sink,
                     manager=manager)
    finally:
        handle.remove()
    assert release.is_set() and "".join(got) == g.text
