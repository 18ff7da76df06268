"""The transformers backend: causal language models run inside the kernel.

This is the only backend (with the attention capture it serves) that imports
torch and transformers, and it does so only when a model is loaded. Its
helpers live beside it: devices and dtypes (``_devices``), hub resolution
(``_hub``), memory release (``_memory``), out-of-memory handling (``_oom``),
seeded sampling (``_sampling``) and stopping (``_stopping``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import (
    BackendError,
    InvalidOptionError,
    LLMMagicWarning,
    MissingDependencyError,
    NotAvailableError,
    PromptTooLongError,
)
from ..resources.cpu import apply_default_threads
from ..resources.estimate import is_encoder_only
from . import _kept
from . import seq2seq as _s2s
from ._devices import bytes_per_device as _bytes_per_device
from ._devices import device_name as _device_name
from ._devices import device_order as _device_order
from ._devices import resolve_device, resolve_dtype
from ._devices import torch_module as _torch
from ._hub import commit_of, config_dir, resolve_hub
from ._logprobs import Recorder as _Recorder
from ._logprobs import TokenTexts as _TokenTexts
from ._memory import loaded_by_this_thread as _loaded_by_this_thread
from ._memory import release_memory
from ._oom import forget as _forget
from ._oom import is_out_of_memory as _is_out_of_memory
from ._oom import out_of_memory_guard as _out_of_memory_guard
from ._sampling import processors as _sampling_processors
from ._sampling import warpers as _warpers
from ._stopping import EventCriteria as _EventCriteria
from ._stopping import Interrupted as _Interrupted
from ._stopping import StopStrings as _StopStrings
from ._stopping import criteria_list as _criteria_list
from ._stopping import stop_hooks as _stop_hooks
from ._warm_up import HF_MODULES as _HF_MODULES
from .base import Backend, BatchResult, GenerationJob, GenerationRequest, LoadSpec

if TYPE_CHECKING:
    import torch

    from ..resources.placement import Placement

__all__ = [
    "HFBackend",
    "HFJob",
    "commit_of",
    "release_memory",
    "resolve_device",
    "resolve_dtype",
    "resolve_hub",
]

log = logging.getLogger("llm_magic.hf")


def _logits_processors(items: list[Any]) -> Any:
    from transformers import LogitsProcessorList

    return LogitsProcessorList(items)

def _kind(config: Any) -> str:
    """"seq2seq" (T5, BART, Marian), "encoder" (BERT) or "causal", before weights are read.

    transformers maps some encoders (BERT, RoBERTa) to a causal head, which
    would generate noise from freshly initialised weights: an encoder loads as
    itself, for attention only.
    """
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    return "encoder" if is_encoder_only(list(getattr(config, "architectures", None) or [])) \
        else "causal"


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
        backend: HFBackend,
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


class HFBackend(Backend):
    """A causal LM and its tokenizer, resident in this process."""

    kind = "hf"
    #: What quantizing did (``backends/_quantize.Quantized``), or None.
    quantized: Any = None

    @property
    def kind_of_model(self) -> str:
        """"causal", "encoder" (attention only) or "seq2seq" (encoder–decoder)."""
        return "seq2seq" if self.seq2seq else "encoder" if self.encoder else "causal"

    @classmethod
    def warm_up_modules(cls) -> tuple[str, ...]:
        """torch, transformers and what a first load of the demo or a causal LM imports."""
        return _HF_MODULES

    def __init__(self, spec: LoadSpec, model: Any, tokenizer: Any, device: str, dtype: str,
                 encoder: bool = False, seq2seq: bool = False) -> None:
        self.spec = spec
        #: An encoder (BERT-style) loads for attention only: it cannot generate.
        self.encoder = encoder
        #: An encoder–decoder (T5, BART, Marian): ``backends/seq2seq`` says what differs.
        self.seq2seq = seq2seq
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.commit = commit_of(spec.path) if spec.path else None
        config = model.config
        found = (getattr(config, attr, None)
                 for attr in ("max_position_embeddings", "n_positions", "seq_length"))
        limits: list[int] = [n for n in found if isinstance(n, int) and n > 0]
        tok_limit = getattr(tokenizer, "model_max_length", None)
        if not limits and isinstance(tok_limit, int) and 0 < tok_limit < 1_000_000:
            limits = [tok_limit]
        self.context_length: int | None = min(limits) if limits else None
        generation_config = getattr(model, "generation_config", None)
        eos = getattr(generation_config, "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids: tuple[int, ...] = (
            tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
        )
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = getattr(generation_config, "pad_token_id", None)
        if pad is None and self.eos_ids:
            pad = self.eos_ids[0]
        self.pad_id: int | None = pad

    # -- what the manager asks before and after a load ----------------------

    @classmethod
    def resolve_device(cls, device: str) -> str:
        return resolve_device(device)

    @classmethod
    def resolve_dtype(cls, dtype: str, device: str) -> str:
        return resolve_dtype(dtype, device)

    @classmethod
    def locate(cls, source: str, kind: str, path: str | None, revision: str | None,
               *, config_only: bool = False) -> tuple[str, str | None]:
        """A hub id becomes its cache snapshot (downloaded when allowed); a folder stays."""
        if kind == "hub":
            if config_only:
                return config_dir(source, revision), None
            return resolve_hub(source, revision)
        assert path is not None
        return path, commit_of(path)

    @classmethod
    def release_memory(cls) -> None:
        release_memory()

    @classmethod
    def check_quantize(cls, spec: LoadSpec) -> None:
        """torchao installed, a device it has kernels for, a checkpoint not yet quantized."""
        from . import _quantize

        _quantize.check(spec)

    # -- loading ---------------------------------------------------------

    @classmethod
    def load(cls, spec: LoadSpec, placement: Placement | None = None) -> HFBackend:
        """Load tokenizer and weights for ``spec`` (whose ``path`` is already resolved).

        ``placement``, the manager's plan, may spread the model over devices with
        accelerate's ``device_map="auto"`` and a ``max_memory`` from the budget;
        without one the model goes whole to ``spec.device``. An out-of-memory
        error drops the partly loaded model and returns its memory before it is
        reported.
        """
        torch = _torch()
        apply_default_threads()
        t0 = time.perf_counter()
        try:
            import transformers
            from transformers import (
                AutoConfig,
                AutoModel,
                AutoModelForCausalLM,
                AutoModelForSeq2SeqLM,
                AutoTokenizer,
            )
        except ImportError as exc:  # pragma: no cover - a dependency
            raise MissingDependencyError(
                "The transformers backend needs `transformers`: `pip install transformers`."
            ) from exc
        log.debug("imported torch %s and transformers %s in %.3fs",
                  torch.__version__, transformers.__version__, time.perf_counter() - t0)
        device = resolve_device(spec.device)
        dtype = resolve_dtype(spec.dtype, device)
        path = spec.path
        assert path is not None
        remote = spec.trust_remote_code
        t = time.perf_counter()
        try:
            config = AutoConfig.from_pretrained(path, trust_remote_code=remote)
        except ValueError as exc:
            if "trust_remote_code" in str(exc):
                raise BackendError(
                    f"Model {spec.source!r} ships its own code. Read it, then load with "
                    "trust_remote_code=True (`%llm load ... --trust-remote-code`) if you trust it."
                ) from exc
            raise BackendError(f"Cannot read the configuration of {spec.source!r}: {exc}") from exc
        kind = _kind(config)
        encoder = kind == "encoder"
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=remote)
        except Exception as exc:
            raise BackendError(f"Cannot load the tokenizer of {spec.source!r}: {exc}") from exc
        log.debug("tokenizer loaded in %.3fs", time.perf_counter() - t)
        t = time.perf_counter()
        where: dict[str, Any] = {}
        spread = placement is not None and placement.device_map is not None
        if placement is not None and placement.device_map is not None:
            where = {"device_map": placement.device_map,
                     "max_memory": placement.accelerate_max_memory()}
        elif device != "cpu" and not spec.quantize:  # quantized: read here, moved layer by layer
            where["device_map"] = device
        oom = None
        in_ram = device == "cpu" or (spread and placement is not None and placement.offloaded)
        try:
            with _loaded_by_this_thread(in_ram):
                auto = {"seq2seq": AutoModelForSeq2SeqLM, "encoder": AutoModel}.get(
                    kind, AutoModelForCausalLM)
                model = auto.from_pretrained(
                    path,
                    config=config,
                    dtype=getattr(torch, dtype),
                    trust_remote_code=remote,
                    **where,
                )
        except ValueError as exc:
            _forget(exc)  # the partly built model must not live on in the traceback
            if spread and "offload" in str(exc):
                raise BackendError(
                    f"{spec.source!r} does not fit where the budget allows ({placement}): "
                    "accelerate would have to offload layers to disk. Raise the budget "
                    "(lm.budget), unload models, or load in a smaller dtype."
                ) from exc
            if "Unrecognized configuration class" in str(exc):
                kind = type(config).__name__
                raise BackendError(
                    f"{spec.source!r} is not a causal language model ({kind}); llm_magic "
                    "generates text with causal LMs (GPT-2, Llama, Qwen, ...)."
                ) from exc
            raise BackendError(f"Loading the weights of {spec.source!r} failed: {exc}") from exc
        except Exception as exc:
            if not _is_out_of_memory(exc):
                raise
            oom = _forget(exc)
        if oom is not None:
            gc.collect()
            release_memory()
            on = str(placement) if spread else device
            tips = ["unload other models"]
            if dtype == "float32":
                tips.append("load in half precision (dtype='bfloat16')")
            tips.append("choose another device")
            if device.startswith("cuda") and not spread:
                tips.append("load with device='auto' to offload layers to CPU memory")
            raise BackendError(
                f"Out of memory while loading {spec.source!r} on {on} in {dtype} ({oom}). The "
                "partly loaded model was dropped and its memory returned. To load it: "
                + "; ".join(tips) + "."
            )
        if spread:
            used = sorted(set((getattr(model, "hf_device_map", None) or {}).values()),
                          key=_device_order)
            if "disk" in used:  # layers read from disk at every token: refuse instead
                del model
                gc.collect()
                release_memory()
                raise BackendError(
                    f"{spec.source!r} does not fit where the budget allows ({placement}): "
                    "accelerate would have offloaded layers to disk. Raise the budget "
                    "(lm.budget), unload models, or load in a smaller dtype."
                )
            device = "+".join(_device_name(d) for d in used) or device
        log.debug("weights loaded and placed on %s in %.3fs", device, time.perf_counter() - t)
        model.eval()
        quantized = None
        if spec.quantize:  # in place, a layer at a time (backends/_quantize)
            from . import _quantize

            try:
                quantized = _quantize.apply(model, spec.quantize, device)
            except BaseException as exc:
                _forget(exc)  # the half-quantized model must not live on in the traceback
                del model
                release_memory()
                raise
        backend = cls(spec, model, tokenizer, device, dtype, encoder=encoder,
                      seq2seq=kind == "seq2seq")
        backend.quantized = quantized
        return backend

    # -- facts -------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        model = self.model
        return {
            "device": self.device,
            "dtype": self.dtype,
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "memory": int(model.get_memory_footprint()),
            "context_length": self.context_length,
            "chat": self.kind_of_model == "causal" and bool(
                getattr(self.tokenizer, "chat_template", None)),
            "kind": self.kind_of_model,
            "architecture": (getattr(model.config, "architectures", None)
                             or [type(model).__name__])[0],
            "commit": self.commit,
            "placement": _bytes_per_device(model, self.device),
            **(_quantized_facts(model, self.device, self.quantized) if self.quantized else {}),
        }

    def memory_owner(self) -> object | None:
        return self.model

    def close(self) -> None:
        if self.kept is not None:
            self.kept.clear()
        self.model = None
        self.tokenizer = None

    # -- generation ------------------------------------------------------

    def render_prompt(self, request: GenerationRequest) -> tuple[str, bool]:
        """The text the model sees and whether it already carries special tokens."""
        if self.seq2seq:
            _s2s.refuse_causal_only(self.spec.name, request)
            if request.messages is not None:  # a conversation: its transcript is the source
                return _kept.transcript(request.messages), False
            return request.prompt, False
        if request.target_lang is not None:
            raise InvalidOptionError(
                f"target_lang applies to translation models (encoder–decoders such as mBART "
                f"or NLLB); {self.spec.name!r} is a causal LM. Ask for the language in the "
                "prompt instead.")
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        use_chat = has_template if request.chat is None else request.chat
        if use_chat and not has_template:
            raise InvalidOptionError(
                f"Model {self.spec.name!r} has no chat template. Generate without chat "
                "(chat=False, `--no-chat`)."
            )
        if request.messages is not None and not use_chat:
            return _kept.transcript(request.messages), False
        if use_chat:
            text = self.tokenizer.apply_chat_template(
                request.chat_messages(), tokenize=False, add_generation_prompt=True
            )
            return str(text), True
        if request.system:
            return f"{request.system}\n\n{request.prompt}", False
        return request.prompt, False

    def _encode(self, texts: list[str], templated: bool) -> dict[str, Any]:
        enc = self.tokenizer(
            texts,
            return_tensors="pt",
            padding=len(texts) > 1,
            add_special_tokens=not templated,
        )
        keep = ("input_ids", "attention_mask")
        return {k: v.to(self.model.device) for k, v in enc.items() if k in keep}

    def _check_length(self, prompt_tokens: int, max_new_tokens: int, explicit: bool = True) -> int:
        ctx = self.context_length
        if ctx is None:
            return max_new_tokens
        if prompt_tokens >= ctx:
            raise PromptTooLongError(
                f"The prompt is {prompt_tokens} tokens, but model {self.spec.name!r} reads at most "
                f"{ctx}. Shorten the prompt or use a model with a longer context."
            )
        room = ctx - prompt_tokens
        if max_new_tokens > room:
            if not explicit:
                return room
            warnings.warn(
                f"Only {room} new tokens fit after a {prompt_tokens}-token prompt in "
                f"the {ctx}-token context of {self.spec.name!r}; generating {room}.",
                LLMMagicWarning,
                stacklevel=4,
            )
            return room
        return max_new_tokens

    def _generate_kwargs(self, request: GenerationRequest, max_new_tokens: int) -> dict[str, Any]:
        config = self.model.generation_config.__class__.from_dict(
            self.model.generation_config.to_dict()
        )
        config.max_new_tokens = max_new_tokens
        config.max_length = None
        config.min_new_tokens = None
        config.min_length = 0
        sample = request.temperature > 0
        config.do_sample = sample
        config.temperature = request.temperature if sample else None
        config.top_p = request.top_p if sample else None
        # Unset, transformers 5 fills in top_k=50: sampling without --top-k means the whole
        # vocabulary, so say so with 0 (no top-k warper).
        config.top_k = (request.top_k or 0) if sample else None
        config.pad_token_id = self.pad_id
        config.eos_token_id = list(self.eos_ids) or None
        return {"generation_config": config}

    def _criteria(self, request: GenerationRequest, prompt_len: int,
                  stop_event: threading.Event, recorder: _Recorder | None = None) -> Any:
        items: list[Any] = [_EventCriteria(stop_event)]
        if recorder is not None:  # first: it completes the step, whoever stops after it
            items.insert(0, recorder.criteria)
        if request.stop:
            items.append(_StopStrings(self.tokenizer, prompt_len, request.stop))
        return _criteria_list(items)

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

    def prepare(self, request: GenerationRequest, stop_event: threading.Event) -> HFJob:
        self._check_generates()
        if self.seq2seq:
            return self._prepare_seq2seq(request, stop_event)
        if request.prefix_ids is not None:
            torch = _torch()
            ids = torch.tensor([list(request.prefix_ids)], device=self.model.device)
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        else:
            text, templated = self.render_prompt(request)
            inputs = self._encode([text], templated)
        n = int(inputs["input_ids"].shape[-1])
        if n == 0:
            raise InvalidOptionError("The prompt encodes to no tokens; write some text.")
        max_new = self._check_length(n, request.max_new_tokens, request.explicit_length)
        kwargs = self._generate_kwargs(request, max_new)
        recorder = self._processors(request, kwargs)
        kwargs["stopping_criteria"] = self._criteria(request, n, stop_event, recorder)
        keep = self._reuse(request, inputs, kwargs)
        job = HFJob(self, inputs, kwargs, stop_event, recorder, request.lead_ids, keep)
        if keep is not None:
            job.reused_tokens, job.cache_note = kwargs.pop("_reused")
        return job

    def _prepare_seq2seq(self, request: GenerationRequest, stop_event: threading.Event
                         ) -> HFJob:
        """An encoder–decoder's job: the source to the encoder, the prefix to the decoder."""
        _s2s.refuse_causal_only(self.spec.name, request)
        lead = list(request.lead_ids)
        if request.prefix_ids is not None:  # a branch: the source, then the output so far
            source = list(request.prefix_ids[: len(request.prefix_ids) - len(lead)])
        else:
            source = self._ids(request.prompt, "translate")
        _s2s.check_source(self.spec.name, len(source), self.context_length)
        inputs, prefix, room = _s2s.inputs(self, request, source)
        kwargs = self._generate_kwargs(request, room)
        recorder = self._processors(request, kwargs)
        kwargs["stopping_criteria"] = self._criteria(request, len(prefix), stop_event, recorder)
        job = HFJob(self, inputs, kwargs, stop_event, recorder, lead, decoder_prefix=prefix)
        if request.keep is not None:  # a conversation's turn: nothing kept, all computed
            job.reused_tokens, job.cache_note = 0, _s2s.REREAD
        return job

    def render_ids(self, request: GenerationRequest) -> list[int]:
        text, templated = self.render_prompt(request)
        return list(self._encode([text], templated)["input_ids"][0].tolist())

    def cache_bytes_for(self, tokens: int) -> int:
        if self.seq2seq:  # nothing is kept between an encoder–decoder's turns
            return 0
        torch = _torch()
        size = torch.empty((), dtype=getattr(self.model, "dtype", torch.float32)).element_size()
        return _kept.bytes_for(self.model.config, size, tokens)

    def _reuse(self, request: GenerationRequest, inputs: dict[str, Any],
               kwargs: dict[str, Any]) -> tuple[str, Any] | None:
        """A conversation's turn: its kept cache, cropped to what still matches, goes in."""
        if request.keep is None:
            return None
        if self.kept is None:
            self.kept = _kept.KeptCaches()
        key = request.keep
        ids = inputs["input_ids"][0].tolist()
        note = self.kept.note(key)
        found = _kept.reuse(self.kept.pop(key), ids, note)
        cache = found.cache
        if cache is None:
            cache = _kept.new_cache(self.model.config)
        kwargs["cache"] = cache
        kwargs["_reused"] = (found.reused, found.note)
        return key, cache

    def _processors(self, request: GenerationRequest, kwargs: dict[str, Any]) -> _Recorder | None:
        """Add the request's logits processors to ``kwargs``; its token recorder, if asked.

        A seeded sampling draws from its own generator, never torch's global one
        (``backends/_sampling``); an unseeded one samples as transformers does.
        """
        config = kwargs["generation_config"]
        warps = (_warpers(config, self.model.generation_config, self.model.device)
                 if config.do_sample else [])
        seeded = config.do_sample and request.seed is not None
        recorder = None
        if request.logprobs:  # sampled mode, seeded: it records the warped scores it is given
            sampling = warps if request.logprobs_mode == "sampled" and not seeded else []
            recorder = _Recorder(request.logprobs, request.logprobs_mode, self._texts(), sampling)
        in_loop = recorder if recorder is not None and recorder.mode == "sampled" else None
        items = _sampling_processors(config, warps, request.seed, in_loop)
        if items:
            kwargs["logits_processor"] = _logits_processors(items)
        return recorder

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

    def generate_batch(
        self, requests: Sequence[GenerationRequest], stop_event: threading.Event
    ) -> list[BatchResult]:
        """Generate all prompts as one left-padded batch (they share sampling settings).

        A seed seeds one generator that draws every row's token at each step: it
        fixes the texts of this batch (its prompts, in their order), while a row
        need not equal its prompt generated alone with that seed. An encoder–decoder's
        sources are padded on the right (their positions start at 0, as alone) and every
        row's decoder starts from the same prefix: its start token, a forced language.
        """
        self._check_generates()
        prefix = _s2s.batch_ids(self, requests) if self.seq2seq else None
        torch = _torch()
        first = requests[0]
        rendered = [self.render_prompt(r) for r in requests]
        templated = rendered[0][1]
        tokenizer = self.tokenizer
        old_side, old_pad = tokenizer.padding_side, tokenizer.pad_token_id
        tokenizer.padding_side = "left" if prefix is None else "right"
        if tokenizer.pad_token_id is None and self.pad_id is not None:
            tokenizer.pad_token_id = self.pad_id
        try:
            inputs = self._encode([t for t, _ in rendered], templated)
        finally:
            tokenizer.padding_side = old_side
            if old_pad is None:
                tokenizer.pad_token_id = old_pad
        width = int(inputs["input_ids"].shape[-1])
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        if prefix is not None:  # the decoder writes after its prefix: the source takes no room
            inputs["decoder_input_ids"] = torch.tensor([prefix] * len(requests),
                                                       device=self.model.device)
            limit = _s2s.decoder_limit(self.model.config)
            max_new = first.max_new_tokens if limit is None else min(first.max_new_tokens,
                                                                     limit - len(prefix))
        else:
            max_new = self._check_length(width, first.max_new_tokens, first.explicit_length)
        kwargs = self._generate_kwargs(first, max_new)
        recorder = self._processors(first, kwargs)  # a seed: one generator for the batch
        interrupted = False
        with (_out_of_memory_guard(repr(self.spec.name), self.device), torch.inference_mode(),
              _stop_hooks(self.model, stop_event), _recording(self.model, recorder)):
            try:
                out = self.model.generate(
                    **inputs, **kwargs,
                    stopping_criteria=self._criteria(first, self._batch_new_from(width, prefix),
                                                     stop_event, recorder),
                )
            except _Interrupted:
                interrupted = True
        if interrupted:
            raise KeyboardInterrupt
        results = []
        eos = set(self.eos_ids)
        rows = out[:, self._batch_new_from(width, prefix):].tolist()
        prompts = inputs["input_ids"].tolist()
        records: list[Any] = [None] * len(rows)
        if recorder is not None:
            records = recorder.records([_row_length(row, eos) for row in rows])
        for row, prompt_len, prompt, kept in zip(rows, lengths, prompts, records, strict=True):
            ids: list[int] = []
            reason = "length"
            for tok in row:
                if tok in eos:
                    reason = "eos"
                    break
                ids.append(tok)
            if stop_event.is_set():
                reason = "interrupted"
            text = tokenizer.decode(ids, skip_special_tokens=True)
            results.append(BatchResult(text, int(prompt_len), len(ids) + (reason == "eos"), reason,
                                       records=kept,
                                       prompt_ids=tuple(prompt[: int(prompt_len)] if prefix
                                                        else prompt[width - int(prompt_len):])))
        return results


    def _batch_new_from(self, width: int, prefix: Sequence[int] | None) -> int:
        """Where a batch's new ids start in what ``generate`` returns (an encoder–decoder's
        after its decoder prefix: the start token, a forced language)."""
        return width if prefix is None else len(prefix)


def _quantized_facts(model: Any, device: str, quantized: Any) -> dict[str, Any]:
    from . import _quantize

    return _quantize.facts(model, device, quantized)


def _row_length(row: list[int], eos: set[int]) -> int:
    """New tokens of one batch row: up to and including its first end-of-sequence token."""
    for i, tok in enumerate(row):
        if tok in eos:
            return i + 1
    return len(row)
