"""Conversations: time to first token per turn, with the kept cache and without, in one run.

A 10-turn chat (a short user message, a ~190-token reply, about 2,000 tokens in
all) on a 12-layer GPT-2-shaped random model with a 4,096-token context and a
ChatML-style template, one torch thread on every side. Each turn is measured
from the call to the first token's logits (a hook on the output layer, the same
moment on every side), in wall-clock time and in the process's CPU time, which
other processes on a busy machine disturb far less; three ways:

- (a) llm_magic's conversation, ``lm.chat(...).say(...)``: the model's cache is
  kept between turns and only the tokens it does not hold are computed;
- (b) a full recompute each turn, as jupyter-ai and simonw/llm do: the whole
  rendered conversation through plain ``lm.generate``, no cache kept (to the
  first token only: the rest of a reply costs the same either way; its replies
  are (a)'s, and its first token is checked equal to (a)'s);
- (c) transformers' documented multi-turn recipe ("Iterative generation" in
  its cache docs): one ``DynamicCache`` passed to ``model.generate`` every turn
  with the re-rendered conversation's ids.

It prints the prompt tokens reused per turn, the kept cache's bytes against
L x 2 x T x kv_heads x head_dim x dtype bytes, ratios, and the targets with
PASS/MISS: from turn 2 on >= 95% of the prompt reused; turn 10's TTFT <= 1.3x
turn 1's and <= 1/5 of the full recompute's; the cache within 5% of the formula.
Beside a / a1 it prints the ratio of the multiply-adds the two turns compute,
the floor no implementation goes under. Each side's replies are checked equal
to the others' (greedy, so they must be).

The random weights speak in whole words: the output layer is masked to tokens
that are one word with its leading space and re-encode to themselves, as a
trained model's replies mostly do (random weights otherwise emit byte fragments
that re-tokenize differently, which no chat model writes). The mask is part of
the weights; every side runs the same model.

Usage: ``python benchmarks/chat.py [--turns 10] [--reply 190] [--rounds 3] [--layers 12]``
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The benchmark's generations stay out of the user's history.
os.environ.setdefault("LLM_MAGIC_HISTORY", os.path.join(tempfile.mkdtemp(), "history.sqlite"))

from _common import table  # noqa: E402

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SYSTEM = "You are a patient tutor who answers questions about Python."
QUESTIONS = (
    "What is a list in Python?",
    "How do I sort one?",
    "And in reverse order?",
    "What does a dict hold?",
    "How do I loop over its keys?",
    "What is a generator?",
    "Why use yield there?",
    "How do exceptions work?",
    "What does finally do?",
    "Thanks, one last thing: what is a class?",
)
SIDES = ("a", "b", "c")
LABELS = {"a": "(a) llm_magic, kept cache", "b": "(b) full recompute",
          "c": "(c) transformers DynamicCache recipe"}


# -- the model --------------------------------------------------------------------------------


def build_model(out: Path, layers: int, context: int) -> Path:
    """A random GPT-2 with a ChatML-style template whose replies are whole words."""
    import torch
    from _models import build_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = build_tokenizer(out, 2048, TEMPLATE)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.save_pretrained(out)
    eos = tok.eos_token_id
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_embd=256, n_layer=layers, n_head=4,
                        n_positions=context, bos_token_id=eos, eos_token_id=eos,
                        pad_token_id=eos, tie_word_embeddings=False)
    model = GPT2LMHeadModel(config)
    words = [t for t in range(len(tok)) if _is_word(tok, t)]
    with torch.no_grad():  # hidden dim 0 reads 1 after the final norm; it lowers other tokens
        model.transformer.ln_f.weight[0] = 0.0
        model.transformer.ln_f.bias[0] = 1.0
        model.lm_head.weight[:, 0] = -100.0
        model.lm_head.weight[words, 0] = 0.0
    model.generation_config.pad_token_id = eos
    model.save_pretrained(out)
    return out


def _is_word(tok: Any, token: int) -> bool:
    text = tok.decode([token])
    return bool(re.fullmatch(r" [A-Za-z]+", text)) and \
        tok.encode(text, add_special_tokens=False) == [token]


# -- the three sides: each runs the whole conversation, timing every turn ----------------------


class Prefill:
    """When the first forward pass since :meth:`start` reached the output layer.

    That is when the first new token's logits exist: the same moment on every
    side, whatever streams it afterwards (llm_magic's cell output polls its
    worker every 50 ms, a transformers streamer is called at once).
    """

    def __init__(self, model: Any) -> None:
        self.t0 = self.cpu0 = 0.0
        self.began: float | None = None
        self.at: float | None = None
        self.at_cpu = 0.0
        model.transformer.register_forward_pre_hook(self._begin)
        model.lm_head.register_forward_hook(self._end)

    def _begin(self, module: Any, args: Any) -> None:
        if self.began is None:
            self.began = time.perf_counter()

    def _end(self, module: Any, args: Any, output: Any) -> None:
        if self.at is None:
            self.at = time.perf_counter()
            self.at_cpu = time.process_time()

    def start(self) -> None:
        self.began = self.at = None
        self.cpu0 = time.process_time()
        self.t0 = time.perf_counter()

    def note(self, into: dict[str, list[float]]) -> None:
        """Append this turn's wall time, CPU time (every thread) and set-up time to ``into``."""
        into["ttft"].append(self.seconds())
        into["cpu"].append(self.at_cpu - self.cpu0)
        into["setup"].append(self.setup())

    def seconds(self) -> float:
        """From :meth:`start` to the first token's logits."""
        assert self.at is not None, "no forward pass ran"
        return self.at - self.t0

    def setup(self) -> float:
        """From :meth:`start` to the first forward pass: rendering, tokenizing, the cache."""
        assert self.began is not None, "no forward pass ran"
        return self.began - self.t0


def side_a(lm: Any, clock: Prefill, reply: int, turns: int) -> dict[str, Any]:
    conv = lm.chat(model="bench", system=SYSTEM, max_new_tokens=reply)
    times: dict[str, list[float]] = {"ttft": [], "cpu": [], "setup": []}
    prompt, reused, texts = [], [], []
    for question in QUESTIONS[:turns]:
        clock.start()
        gen = conv.say(question)
        clock.note(times)
        prompt.append(gen.stats.prompt_tokens)
        reused.append(gen.stats.reused_tokens or 0)
        texts.append(gen.text)
        assert gen.stats.new_tokens == reply, "a reply stopped early"
    last = conv.turns[-1]
    held = last.prompt_tokens + last.new_tokens - 1  # the last token's keys are never computed
    out = {**times, "prompt": prompt, "reused": reused, "texts": texts,
           "bytes": conv.cache_bytes, "held": held}
    conv.forget()
    return out


def side_b(lm: Any, clock: Prefill, tok: Any, replies: list[str]) -> dict[str, Any]:
    """Each turn's whole conversation (with (a)'s replies) computed afresh, to its first token.

    The rest of a reply costs the same with or without a kept cache of earlier
    turns, so this side stops at the first token; it must be (a)'s first token.
    """
    messages = [{"role": "system", "content": SYSTEM}]
    times: dict[str, list[float]] = {"ttft": [], "cpu": [], "setup": []}
    first = []
    for question, reply in zip(QUESTIONS, replies, strict=False):
        messages.append({"role": "user", "content": question})
        clock.start()
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        gen = lm.generate(text, model="bench", chat=False, max_new_tokens=1)
        clock.note(times)
        first.append(reply.startswith(gen.text))
        messages.append({"role": "assistant", "content": reply})
    return {**times, "first": first}


def side_c(model: Any, clock: Prefill, tok: Any, reply: int, turns: int
           ) -> dict[str, Any]:
    """transformers' recipe as documented: one DynamicCache, the re-rendered ids each turn."""
    from transformers import DynamicCache

    past_key_values = DynamicCache(config=model.config)
    messages = [{"role": "system", "content": SYSTEM}]
    times: dict[str, list[float]] = {"ttft": [], "cpu": [], "setup": []}
    texts = []
    for question in QUESTIONS[:turns]:
        messages.append({"role": "user", "content": question})
        clock.start()
        inputs = tok.apply_chat_template(messages, add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)
        input_length = inputs["input_ids"].shape[1]
        # The docs pass ``past_key_values=``; transformers 5.25 renamed it ``cache=``.
        outputs = model.generate(**inputs, do_sample=False, max_new_tokens=reply,
                                 min_new_tokens=reply, cache=past_key_values)
        clock.note(times)
        completion = tok.decode(outputs[0, input_length:], skip_special_tokens=True)
        texts.append(completion)
        messages.append({"role": "assistant", "content": completion})
    return {**times, "texts": texts}


# -- the report ---------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def _verdict(ok: bool, distance: str) -> str:
    return f"{'PASS' if ok else 'MISS'} ({distance})"


def work(config: Any, computed: int, cached: int) -> float:
    """Multiply-adds of a prefill of ``computed`` tokens after ``cached`` ones (per layer:
    12 d^2 for the projections and the MLP, 2 d per earlier position for attention)."""
    d = config.n_embd
    positions = sum(range(cached, cached + computed)) + computed  # each attends to itself too
    return config.n_layer * (12 * d * d * computed + 2 * d * positions)


def report(runs: dict[str, list[dict[str, Any]]], config: Any, turns: int, rounds: int,
           params: int, reply: int) -> None:
    def median(side: str, key: str) -> list[float]:
        return [statistics.median(r[key][i] for r in runs[side]) for i in range(turns)]

    a0 = runs["a"][0]
    prompt, reused = a0["prompt"], a0["reused"]
    macs = [work(config, prompt[i] - reused[i], reused[i]) for i in range(turns)]
    print(f"model: GPT-2 shaped, random, {config.n_layer} layers, n_embd {config.n_embd}, "
          f"{config.n_head} heads, context {config.n_positions:,}, {params / 1e6:.1f}M "
          f"parameters, float32; 1 torch thread; {turns} turns of a short message and "
          f"{reply} new tokens; median of {rounds} rounds")
    for side in SIDES:
        print(f"  {LABELS[side]}")
    results = {}
    for key, title in (("ttft", "wall clock"), ("cpu", "CPU time of the process")):
        med = {s: median(s, key) for s in SIDES}
        setup = {s: median(s, "setup") for s in SIDES}
        rows = []
        for i in range(turns):
            a, b, c = med["a"][i], med["b"][i], med["c"][i]
            wall = key == "ttft"
            rows.append((str(i + 1), f"{prompt[i]:,}", f"{reused[i]:,}",
                         f"{reused[i] / prompt[i]:.1%}",
                         f"{_ms(a)} ({_ms(setup['a'][i])})" if wall else _ms(a),
                         f"{_ms(b)} ({_ms(setup['b'][i])})" if wall else _ms(b),
                         f"{_ms(c)} ({_ms(setup['c'][i])})" if wall else _ms(c),
                         f"{a / med['a'][0]:.2f}", f"{macs[i] / macs[0]:.2f}",
                         f"{a / b:.3f}", f"{c / b:.3f}", f"{a / c:.2f}"))
        print(f"\nTTFT, {title}: ms from the call to the first token's logits"
              + (" (in brackets: to the first forward pass)" if key == "ttft" else ""))
        print(table(rows, ("turn", "prompt tok", "reused (a)", "reused %", "a ms", "b ms",
                           "c ms", "a / a1", "work / w1", "a / b", "c / b", "a / c")))
        results[key] = med
    print("work / w1: the multiply-adds (a)'s turn computes over turn 1's, the arithmetic floor "
          "of a / a1\n")

    same_a = all(r["texts"] == a0["texts"] for r in runs["a"])
    first_b = all(all(r["first"]) for r in runs["b"])
    same_ac = all(r["texts"] == a0["texts"] for r in runs["c"])
    held, kept = a0["held"], a0["bytes"]
    heads = config.n_head
    head_dim = config.n_embd // heads
    formula = config.n_layer * 2 * held * heads * head_dim * 4
    print(f"(a)'s replies the same every round: {'yes' if same_a else 'NO'}; (b)'s first token "
          f"of every turn is (a)'s: {'yes' if first_b else 'NO'}; (c)'s replies are (a)'s: "
          f"{'yes' if same_ac else 'NO'}")
    print(f"kept cache after turn {turns}: {kept:,} bytes for T={held:,} tokens; formula "
          f"{config.n_layer} x 2 x {held:,} x {heads} x {head_dim} x 4 B = {formula:,} bytes "
          f"(ratio {kept / formula:.4f})\n")

    later = [(reused[i] / prompt[i], i + 1) for i in range(1, turns)]
    low, at = min(later) if later else (1.0, 1)
    off = abs(kept - formula) / formula
    targets = [(f"turns 2-{turns}: >= 95% of prompt tokens reused",
                _verdict(low >= 0.95, f"lowest {low:.1%} at turn {at}, "
                         f"{(low - 0.95) * 100:+.1f} points"))]
    for key, label in (("ttft", "wall"), ("cpu", "CPU")):
        med = results[key]
        growth = med["a"][-1] / med["a"][0]
        versus = med["a"][-1] / med["b"][-1]
        targets += [
            (f"turn-{turns} TTFT <= 1.3x turn 1's ({label})",
             _verdict(growth <= 1.3, f"{growth:.2f}x, {growth - 1.3:+.2f}x from the target; "
                      f"work ratio {macs[-1] / macs[0]:.2f}x")),
            (f"turn-{turns} TTFT <= 1/5 of the full recompute's ({label})",
             _verdict(versus <= 0.2, f"{versus:.3f} = 1/{1 / versus:.1f}, "
                      f"{versus - 0.2:+.3f} from 0.200")),
        ]
    targets.append(("kept cache bytes within 5% of L*2*T*kv_heads*head_dim*dtype",
                     _verdict(off <= 0.05, f"{off:.2%} off")))
    print(table(targets, ("target", "result")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=10, help="turns in the conversation")
    parser.add_argument("--reply", type=int, default=190, help="new tokens per reply")
    parser.add_argument("--rounds", type=int, default=3, help="whole conversations per side")
    parser.add_argument("--layers", type=int, default=12, help="transformer layers")
    parser.add_argument("--context", type=int, default=4096, help="n_positions")
    args = parser.parse_args()
    if not 1 <= args.turns <= len(QUESTIONS):
        parser.error(f"--turns is 1 to {len(QUESTIONS)}")

    import torch

    import llm_magic as lm

    path = build_model(Path(tempfile.mkdtemp(prefix="llm_magic_chat_")), args.layers,
                       args.context)
    lm.set_threads(1)
    torch.set_num_threads(1)
    handle = lm.load(str(path), name="bench", dtype="float32")
    model, tok = handle.model, handle.tokenizer
    params = sum(p.numel() for p in model.parameters())
    clock = Prefill(model)

    warm = side_a(lm, clock, 8, 2)  # every path once, short
    side_b(lm, clock, tok, warm["texts"])
    side_c(model, clock, tok, 8, 2)
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SIDES}
    started = time.perf_counter()
    for _ in range(args.rounds):
        runs["a"].append(side_a(lm, clock, args.reply, args.turns))
        runs["b"].append(side_b(lm, clock, tok, runs["a"][-1]["texts"]))
        runs["c"].append(side_c(model, clock, tok, args.reply, args.turns))
    print(f"({time.perf_counter() - started:.0f} s of measuring)\n")
    report(runs, model.config, args.turns, args.rounds, params, args.reply)


if __name__ == "__main__":
    main()
