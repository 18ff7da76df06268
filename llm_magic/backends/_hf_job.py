"""One generation on a transformers model, run on the worker thread.

:class:`HFJob` is what ``HFBackend.prepare`` returns: it runs ``model.generate`` with
a streamer that forwards each step's new ids (``_Streamer``), decodes them without
splitting a multi-byte character (``_Detokenizer``), reads the raw distribution with a
forward hook when token records are asked (``_recording``, also used by a batch) and
keeps a conversation's cache after the run.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from . import _kept
from ._devices import torch_module as _torch
from ._logprobs import Recorder as _Recorder
from ._oom import out_of_memory_guard as _out_of_memory_guard
from ._stopping import Interrupted as _Interrupted
from ._stopping import stop_hooks as _stop_hooks
from .base import GenerationJob

if TYPE_CHECKING:
    import torch

__all__ = ["HFJob"]


class _Detokenizer:
    """Incremental decoding that never splits a multi-byte character."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def push(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        after = decode(self.ids[self.prefix :], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""

    def text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)


class _Streamer:
    """transformers streamer that forwards new token ids to a callback."""

    def __init__(self, put: Callable[[Any], None]) -> None:
        self._put = put
        self._prompt_seen = False
        #: Steps streamed so far (each a token per row), and the ids of a one-row run.
        self.steps = 0
        self.ids: list[int] = []

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.steps += 1
        ids = value.reshape(-1).tolist()
        self.ids.extend(ids)
        self._put(ids)

    def end(self) -> None:
        pass


@contextlib.contextmanager
def _recording(model: Any, recorder: _Recorder | None) -> Iterator[None]:
    """Read the raw distribution with a forward hook on the model while it generates."""
    if recorder is None or recorder.mode != "raw":
        yield
        return
    handle = model.register_forward_hook(recorder.hook)
    try:
        yield
    finally:
        handle.remove()


class HFJob(GenerationJob):
    """One prepared generation on a transformers model."""

    def __init__(
        self,
        backend: Any,  # the HFBackend (typed loosely: hf.py imports this module)
        inputs: dict[str, Any],
        kwargs: dict[str, Any],
        stop_event: threading.Event,
        recorder: _Recorder | None = None,
        lead_ids: Sequence[int] = (),
        keep: tuple[str, Any] | None = None,
        decoder_prefix: Sequence[int] | None = None,
    ) -> None:
        self.backend = backend
        #: A conversation's key and the cache this turn extends (kept again after the run).
        self.keep = keep
        self.inputs = inputs
        self.kwargs = kwargs
        self.stop_event = stop_event
        self.prompt_tokens = int(inputs["input_ids"].shape[-1])
        ids: list[int] = inputs["input_ids"][0].tolist()
        #: A branch continues output it already has: those ids count as text, not as prompt.
        lead = len(lead_ids)
        self._prompt_ids = ids[: len(ids) - lead]
        self.prompt_tokens = len(self._prompt_ids)
        self._detok = _Detokenizer(backend.tokenizer)
        self._detok.ids, self._detok.read = list(ids[len(ids) - lead :]), lead
        self._lead = lead
        #: Where the new ids start in what ``generate`` returns (after the prompt here).
        self._new_from = self.prompt_tokens
        #: An encoder–decoder's job: the source is the whole prompt, and the decoder
        #: returns its prefix (start token, forced language, a branch's lead) then new ids.
        self.seq2seq = decoder_prefix is not None
        if decoder_prefix is not None:
            self._prompt_ids = ids
            self.prompt_tokens = len(ids)
            self._detok.ids, self._detok.read = list(lead_ids), lead
            self._new_from = len(decoder_prefix)
        self._eos = set(backend.eos_ids)
        self.recorder = recorder
        self._records: tuple[Any, ...] | None = None

    def run(self, put: Callable[[Any], None]) -> None:
        torch = _torch()
        model = self.backend.model
        streamer = _Streamer(put)
        if self.kwargs["generation_config"].max_new_tokens == 0:  # a branch at the last token
            self._records = () if self.recorder is not None else None
            return
        ran = False
        try:
            with (_out_of_memory_guard(repr(self.backend.spec.name), self.backend.device),
                  torch.inference_mode(), _stop_hooks(model, self.stop_event),
                  _recording(model, self.recorder)):
                out = model.generate(**self.inputs, **self.kwargs, streamer=streamer)
            ran = True
        except _Interrupted:
            ran = True
            self.stop_reason = "interrupted"
            return
        finally:
            if self.recorder is not None:
                self._records = self.recorder.records([streamer.steps])[0]
            if self.keep is not None:
                self._keep(streamer.ids, ran)
        new = out[0, self._new_from :].tolist()
        if self.stop_event.is_set():
            self.stop_reason = "interrupted"
        elif new and new[-1] in self._eos:
            self.stop_reason = "eos"

    def _keep(self, new_ids: list[int], ran: bool) -> None:
        """Keep the conversation's cache, cropped to what was really computed."""
        assert self.keep is not None and self.backend.kept is not None
        key, cache = self.keep
        ids = self.inputs["input_ids"][0].tolist() + new_ids
        self.backend.kept.put(key, _kept.settle(cache, ids) if ran else None)

    def decode(self, chunks: Sequence[Any]) -> str:
        ids = [i for chunk in chunks for i in chunk]
        self.new_tokens += len(ids)
        return self._detok.push(ids) if ids else ""

    def count(self, chunks: Sequence[Any]) -> None:
        for chunk in chunks:
            self.new_tokens += len(chunk)
            self._detok.ids.extend(chunk)

    def final_text(self) -> str:
        """The exact decoding of every new token."""
        return self._detok.text()

    def sequence_ids(self) -> list[int] | None:
        if self.seq2seq:  # the source and the output are two sequences
            return None
        return self._prompt_ids + self._detok.ids

    def prompt_ids(self) -> list[int]:
        return list(self._prompt_ids)

    def decoder_ids(self) -> list[int] | None:
        """An encoder–decoder's output as the decoder read it: its prefix (start token, a
        forced language), then every output token (None for a causal model)."""
        if not self.seq2seq:
            return None
        return self.inputs["decoder_input_ids"][0].tolist() + self._detok.ids[self._lead:]

    def token_records(self) -> tuple[Any, ...] | None:
        return self._records

    def lead_text(self) -> str:
        if not self._lead:
            return ""
        return str(self.backend.tokenizer.decode(self._detok.ids[: self._lead],
                                                 skip_special_tokens=True))
