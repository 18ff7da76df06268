"""The analyses of a transformers model: ``HFBackend``'s entry points into its captures.

:class:`HFAnalyses` is the base class ``HFBackend`` inherits them from. Each entry
point checks its input (a text or ids, a causal model or an encoder–decoder) and
hands the model to its capture module: ``_attention``, ``_logprobs``, ``_lens``,
``_divergence``, ``_patching``, ``_patching_grid``, ``_attribution`` and their
``_seq2seq`` counterparts. The helpers they share with generation live here too:
whether the model generates at all, a text's or ids' checked token ids, token texts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ..errors import InvalidOptionError, NotAvailableError
from . import seq2seq as _s2s
from ._logprobs import TokenTexts as _TokenTexts
from ._oom import out_of_memory_guard as _out_of_memory_guard
from .base import Backend, LoadSpec

__all__ = ["HFAnalyses"]


class HFAnalyses(Backend):
    """The analysis entry points of ``HFBackend`` (which sets these attributes)."""

    spec: LoadSpec
    model: Any
    tokenizer: Any
    device: str
    encoder: bool
    seq2seq: bool
    context_length: int | None
    pad_id: int | None
    quantized: Any

    def _check_generates(self) -> None:
        if self.encoder:
            arch = (getattr(self.model.config, "architectures", None)
                    or [type(self.model).__name__])[0]
            raise NotAvailableError(
                f"Model {self.spec.name!r} is an encoder ({arch}): it reads text but cannot "
                f"generate it. Look at its attention with lm.attention(text, "
                f"model={self.spec.name!r}), or generate with a causal LM (GPT-2, Llama, ...)."
            )

    def capture_attention(self, source: str | Sequence[int], *, max_tokens: int,
                          target: str | Sequence[int] | None = None) -> Any:
        """The exact attention of one eager forward pass (see ``backends/_attention``; an
        encoder–decoder's three kinds over ``source`` and ``target``: ``_attention_seq2seq``)."""
        from . import _attention, _attention_seq2seq

        if self.seq2seq or target is not None:
            with _out_of_memory_guard(repr(self.spec.name), self.device):
                return _attention_seq2seq.capture_for(self, source, target, max_tokens=max_tokens)
        ids = self._ids(source, "look at")
        with _out_of_memory_guard(repr(self.spec.name), self.device):
            return _attention.capture(self.model, self.tokenizer, ids, causal=not self.encoder,
                                      max_tokens=max_tokens, context_length=self.context_length)

    def _texts(self) -> _TokenTexts:
        texts = getattr(self, "_token_texts", None)
        if texts is None:
            texts = self._token_texts = _TokenTexts(self.tokenizer)
        return texts

    def score(self, source: str | Sequence[int], *, logprobs: int,
              max_tokens: int | None = None) -> Any:
        """Teacher-force ``source`` in one forward pass (see ``backends/_logprobs``)."""
        from . import _logprobs

        self._check_generates()
        if self.seq2seq:
            raise InvalidOptionError(
                f"{self.spec.name!r} is an encoder–decoder model: scoring reads an output for "
                "a source. Give both: lm.score(source, target=..., model=...).")
        ids = self._ids(source, "score")
        with _out_of_memory_guard(repr(self.spec.name), self.device):
            return _logprobs.score(self.model, self.tokenizer, ids, k=logprobs,
                                   max_tokens=max_tokens or 1_000_000,
                                   context_length=self.context_length)

    def score_target(self, source: str | Sequence[int], target: str | Sequence[int], *,
                     logprobs: int, max_tokens: int | None = None) -> Any:
        """Teacher-force ``target`` after (causal) or for (encoder–decoder) ``source``.

        The capture's ids are the token before the target (read, not scored), then
        the target's; one record per target token.
        """
        from . import _logprobs

        self._check_generates()
        if self.seq2seq:
            return _s2s.score_target(self, source, target, logprobs=logprobs)
        head = self._ids(source, "score")
        tail = (list(self.tokenizer(target, add_special_tokens=False, verbose=False)["input_ids"])
                if isinstance(target, str) else self._ids(target, "score"))
        if not tail:
            raise InvalidOptionError("The target encodes to no tokens; write the text to score.")
        with _out_of_memory_guard(repr(self.spec.name), self.device):
            full = _logprobs.score(self.model, self.tokenizer, head + tail, k=logprobs,
                                   start=len(head), max_tokens=max_tokens or 1_000_000,
                                   context_length=self.context_length)
        cut = len(head) - 1
        return type(full)(full.ids[cut:], full.texts[cut:], full.records)

    def logit_lens(self, source: str | Sequence[int], *, top: int, max_tokens: int,
                   target: str | Sequence[int] | None = None) -> Any:
        """The exact, self-checked logit lens of one forward pass (see ``backends/_lens``;
        an encoder–decoder's decoder over ``target``: ``backends/_lens_seq2seq``)."""
        from . import _lens, _lens_seq2seq

        self._check_generates()
        if self.seq2seq:
            with _out_of_memory_guard(repr(self.spec.name), self.device):
                return _lens_seq2seq.lens_of(self, source, target, top=top, max_tokens=max_tokens)
        if target is not None:
            raise InvalidOptionError(
                f"target= is an encoder–decoder's output; {self.spec.name!r} is a causal LM: "
                "look at the whole text, lm.logit_lens(source + target, model=...).")
        ids = self._ids(source, "look at")
        with _out_of_memory_guard(repr(self.spec.name), self.device):
            return _lens.lens(self.model, self.tokenizer, ids, top=top, max_tokens=max_tokens,
                              context_length=self.context_length, texts=self._texts())

    def _ids(self, source: str | Sequence[int], purpose: str) -> list[int]:
        """A text tokenized as the tokenizer does by default (special tokens included), or ids
        checked against the vocabulary (an embedding lookup would fail with a bare IndexError)."""
        if isinstance(source, str):
            if not source.strip():
                raise InvalidOptionError(f"The text is empty: write some text to {purpose}.")
            return list(self.tokenizer(source, add_special_tokens=True, verbose=False)["input_ids"])
        ids = [int(i) for i in source]
        vocab = int(getattr(self.model.config, "vocab_size", 0) or 0)
        bad = [i for i in ids if not 0 <= i < (vocab or i + 1)]
        if bad:
            raise InvalidOptionError(f"Token id {bad[0]} is not in the vocabulary of "
                                     f"{self.spec.name!r} (ids 0 to {vocab - 1}).")
        return ids

    def divergence(self, reference: Backend, text: str, *, max_tokens: int,
                   target: str | None = None) -> Any:
        """Next-token distributions over ``text`` (an encoder–decoder's over ``target`` for
        the source ``text``) against ``reference``'s (``_divergence``)."""
        from . import _divergence

        with _out_of_memory_guard(repr(self.spec.name), self.device):
            return _divergence.divergence(self, reference, text, max_tokens=max_tokens,
                                          target=target)

    def _answer_ids(self, answers: Sequence[str | int]) -> list[int]:
        from . import _patching

        return _patching.answer_ids(self.model, [a if isinstance(a, int) else self.token_id(a)
                                                 for a in answers])

    def ablate(self, source: str | Sequence[int], *, heads: Sequence[tuple[int, int]],
               layers: Sequence[int], mlp: Sequence[int], mode: str,
               answers: Sequence[str | int] | None, target: str | Sequence[int] | None = None,
               part: str | None = None) -> Any:
        """Ablate heads, attention blocks or MLPs with hooks (see ``backends/_patching``; an
        encoder–decoder's stacks: ``backends/_patching_seq2seq``)."""
        from . import _patching, _patching_seq2seq

        self._check_generates()
        if self.seq2seq:
            with _out_of_memory_guard(repr(self.spec.name), self.device):
                return _patching_seq2seq.ablate(self, source, target=target, part=part,
                                                heads=heads, layers=layers, mlp=mlp, mode=mode,
                                                answers=answers)
        _patching_seq2seq.refuse_causal(self.spec.name, target, part)
        ids = self._ids(source, "ablate")
        chosen = None if answers is None else self._answer_ids(answers)
        with _out_of_memory_guard(repr(self.spec.name), self.device):
            return _patching.ablate(self.model, ids, heads=heads, layers=layers, mlp=mlp,
                                    mode=mode, answers=chosen, texts=self._texts(),
                                    context_length=self.context_length)

    def patch(self, clean: str | Sequence[int], corrupt: str | Sequence[int], *, over: str,
              answers: Sequence[str | int], metric: Any, align: Any,
              target: str | Sequence[int] | None = None, part: str | None = None) -> Any:
        """Activation patching, batched (see ``backends/_patching_grid``; an encoder–decoder's
        stacks: ``backends/_patching_seq2seq``)."""
        from . import _patching_grid, _patching_seq2seq

        self._check_generates()
        if self.seq2seq:
            with _out_of_memory_guard(repr(self.spec.name), self.device):
                return _patching_seq2seq.patch(self, clean, corrupt, target=target, part=part,
                                               over=over, answers=answers, metric=metric,
                                               align=align)
        _patching_seq2seq.refuse_causal(self.spec.name, target, part)
        clean_ids, corrupt_ids = self._ids(clean, "patch from"), self._ids(corrupt, "patch into")
        texts: tuple[str, ...] = ()
        if metric is None:
            a, b = self._answer_ids(answers)
            metric, texts = _patching_grid.logit_difference(a, b), (self._texts()(a),
                                                                    self._texts()(b))
        with _out_of_memory_guard(repr(self.spec.name), self.device):
            return _patching_grid.patch(self.model, clean_ids, corrupt_ids, over=over,
                                        metric=metric, align=align, texts=self._texts(),
                                        context_length=self.context_length, answer_texts=texts)

    def attribute(self, source: str | Sequence[int], *, rows: Sequence[tuple[Any, Any, Any]],
                  method: str, steps: int, baseline: Any, max_tokens: int,
                  output: str | Sequence[int] | None = None,
                  target_lang: str | None = None) -> Any:
        """Attribute output tokens to the tokens before them (see ``backends/_attribution``;
        an encoder–decoder's to its source and decoder input: ``_attribution_seq2seq``)."""
        from . import _attribution, _attribution_seq2seq

        self._check_generates()
        if self.seq2seq:
            with _out_of_memory_guard(repr(self.spec.name), self.device):
                return _attribution_seq2seq.attribute(
                    self, source, rows=rows, output=output, target_lang=target_lang,
                    method=method, steps=steps, baseline=baseline, max_tokens=max_tokens)
        if target_lang is not None:
            raise InvalidOptionError(f"target_lang applies to translation models; "
                                     f"{self.spec.name!r} is a causal LM.")
        ids = self._ids(source, "attribute")
        before = None
        if output is not None:  # rows index the output, teacher-forced after the text
            tail = (list(self.tokenizer(output, add_special_tokens=False, verbose=False)[
                "input_ids"]) if isinstance(output, str) else self._ids(output, "attribute"))
            before, rows = len(ids), _attribution.rows_after(rows, len(ids), len(tail))
            ids += tail
        wanted = _attribution.rows_of(rows, len(ids), self.token_id)
        with _out_of_memory_guard(repr(self.spec.name), self.device):
            cap = _attribution.attribute(
                self.model, ids, wanted, method=method, steps=steps, baseline=baseline,
                max_tokens=max_tokens, texts=self._texts(), pad_id=self.pad_id,
                context_length=self.context_length,
                quantized=getattr(self.quantized, "scheme", None))
        return cap if before is None else dataclasses.replace(cap, prompt_tokens=before)

    def token_id(self, text: str) -> int:
        """The id of ``text`` when the tokenizer makes exactly one token of it."""
        ids = self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) != 1:
            shown = [self._texts()(i) for i in ids]
            raise InvalidOptionError(
                f"{text!r} is {len(ids)} tokens for {self.spec.name!r} ({shown!r}), not one; "
                "pass a single token's text or its id."
            )
        return int(ids[0])

    def language_id(self, lang: str) -> int:
        """The id ``target_lang=lang`` forces after the decoder's start token (``seq2seq``)."""
        if not self.seq2seq:
            raise InvalidOptionError(f"target_lang applies to translation models; "
                                     f"{self.spec.name!r} is a causal LM.")
        return _s2s._target_lang(self.tokenizer, self.spec.name, lang)
