"""The transformers backend: causal language models run inside the kernel.

This is the only backend (with the attention capture it serves) that imports
torch and transformers, and it does so only when a model is loaded. Its
helpers live beside it: devices and dtypes (``_devices``), hub resolution
(``_hub``), memory release (``_memory``), out-of-memory handling (``_oom``),
seeded sampling (``_sampling``) and stopping (``_stopping``). Its own parts are
split over private modules: loading (``_hf_load``), the generation job on the
worker thread (``_hf_job``), a padded batch (``_hf_batch``) and the analysis entry
points ``HFBackend`` inherits (``_hf_analyses``); this module keeps the backend's
state, its facts and the preparation of a generation.
"""

from __future__ import annotations

import threading
import warnings
from typing import TYPE_CHECKING, Any

from ..errors import InvalidOptionError, LLMMagicWarning, PromptTooLongError
from . import _hf_batch, _hf_load, _kept
from . import seq2seq as _s2s
from ._devices import bytes_per_device as _bytes_per_device
from ._devices import resolve_device, resolve_dtype
from ._devices import torch_module as _torch
from ._hf_analyses import HFAnalyses
from ._hf_job import HFJob
from ._hub import commit_of, config_dir, resolve_hub
from ._logprobs import Recorder as _Recorder
from ._memory import release_memory
from ._sampling import processors as _sampling_processors
from ._sampling import warpers as _warpers
from ._stopping import EventCriteria as _EventCriteria
from ._stopping import StopStrings as _StopStrings
from ._stopping import criteria_list as _criteria_list
from ._warm_up import HF_MODULES as _HF_MODULES
from .base import GenerationRequest, LoadSpec

if TYPE_CHECKING:
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


def _logits_processors(items: list[Any]) -> Any:
    from transformers import LogitsProcessorList

    return LogitsProcessorList(items)


class HFBackend(HFAnalyses):
    """A causal LM and its tokenizer, resident in this process.

    Its analysis entry points (attention, score, lens, patching, attribution...)
    come from :class:`~llm_magic.backends._hf_analyses.HFAnalyses`.
    """

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
        return _hf_load.load(cls, spec, placement)

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

    #: Generate all prompts as one padded batch (``backends/_hf_batch``). The function itself,
    #: not a method calling it: a delegating frame would move the warning that the context
    #: is too short (``_check_length``'s stacklevel) from the caller's line into llm_magic.
    generate_batch = _hf_batch.generate_batch


def _quantized_facts(model: Any, device: str, quantized: Any) -> dict[str, Any]:
    from . import _quantize

    return _quantize.facts(model, device, quantized)

