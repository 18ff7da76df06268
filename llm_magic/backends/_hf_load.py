"""Loading a transformers model: what ``HFBackend.load`` does.

Read the configuration (which says the model's kind: causal, encoder or
encoder–decoder), the tokenizer, then the weights where the manager's placement
puts them; an out-of-memory error or a spill to disk drops the partly loaded model
and returns its memory before it is reported; quantize last, in place.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import TYPE_CHECKING, Any

from ..errors import BackendError, MissingDependencyError
from ..resources.cpu import apply_default_threads
from ..resources.estimate import is_encoder_only
from ._devices import device_name as _device_name
from ._devices import device_order as _device_order
from ._devices import resolve_device, resolve_dtype
from ._devices import torch_module as _torch
from ._memory import loaded_by_this_thread as _loaded_by_this_thread
from ._memory import release_memory
from ._oom import forget as _forget
from ._oom import is_out_of_memory as _is_out_of_memory
from .base import LoadSpec

if TYPE_CHECKING:
    from ..resources.placement import Placement

__all__ = ["load"]

log = logging.getLogger("llm_magic.hf")


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


def load(cls: Any, spec: LoadSpec, placement: Placement | None = None) -> Any:
    """``cls`` (the HFBackend class) loaded for ``spec``: see ``HFBackend.load``."""
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
