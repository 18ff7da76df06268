"""Count a model's bytes before reading its weights.

Three ways, best first: build the model from its config on torch's ``meta``
device (no memory, exact shapes, buffers and tied weights included); read the
safetensors headers (shapes and dtypes, no data); scale the weight files' sizes.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from dataclasses import dataclass
from html import escape
from typing import Any

from ..common.sizes import format_count, format_size
from ..errors import LLMMagicError

__all__ = ["Count", "Estimate", "count_model", "estimate_path", "is_encoder_only"]

log = logging.getLogger("llm_magic.resources")

_ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}
# safetensors dtype -> (bytes per element, is a float that the load converts)
_ST_DTYPES = {
    "F64": (8, True), "F32": (4, True), "F16": (2, True), "BF16": (2, True),
    "F8_E4M3": (1, False), "F8_E5M2": (1, False),
    "I64": (8, False), "I32": (4, False), "I16": (2, False), "I8": (1, False),
    "U8": (1, False), "BOOL": (1, False),
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class Count:
    """What a counting method found."""

    memory: int
    parameters: int
    largest_block: int
    method: str


def count_model(path: str, dtype: str, trust_remote_code: bool = False) -> Count | None:
    """Bytes the weights of the model at ``path`` take in ``dtype``; None if nothing worked."""
    try:
        return _from_meta(path, dtype, trust_remote_code)
    except Exception as exc:  # any model class can fail on meta; fall back to the files
        log.debug("meta-device estimate of %s failed: %r", path, exc)
    config = _config_dict(path)
    for method in (_from_safetensors, _from_file_sizes):
        try:
            found = method(path, dtype, config)
        except (OSError, ValueError, KeyError, struct.error) as exc:
            log.debug("%s estimate of %s failed: %r", method.__name__, path, exc)
            continue
        if found is not None:
            return found
    return None


def _config_dict(path: str) -> dict[str, Any]:
    try:
        with open(os.path.join(path, "config.json")) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


_NOT_CAUSAL_HEADS = ("ForMaskedLM", "ForSequenceClassification", "ForTokenClassification",
                     "ForQuestionAnswering", "ForMultipleChoice", "ForPreTraining")


def is_encoder_only(architectures: list[str]) -> bool:
    """Whether a checkpoint's architectures are all encoders (or heads on one).

    transformers maps some encoders (BERT, RoBERTa) to a causal head, which
    would be freshly initialised: such a model loads (and is sized) as itself.

    Examples
    --------
    >>> is_encoder_only(["BertModel"]), is_encoder_only(["GPT2LMHeadModel"])
    (True, False)
    """
    return bool(architectures) and all(
        a.endswith(_NOT_CAUSAL_HEADS) or (a.endswith("Model") and not a.endswith("LMHeadModel"))
        for a in architectures
    )


def _from_meta(path: str, dtype: str, remote: bool) -> Count:
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, trust_remote_code=remote)
    auto = (AutoModel if is_encoder_only(list(getattr(config, "architectures", None) or []))
            else AutoModelForCausalLM)
    with torch.device("meta"):
        model = auto.from_config(config, dtype=getattr(torch, dtype), trust_remote_code=remote)
    keep32 = set(getattr(model, "_keep_in_fp32_modules", None) or ()) | set(
        getattr(model, "_keep_in_fp32_modules_strict", None) or ()
    )
    sizes: dict[int, int] = {}
    parameters = 0
    named = [*model.named_parameters(), *model.named_buffers()]
    for name, tensor in named:
        if id(tensor) in sizes:
            continue
        itemsize = tensor.element_size()
        if keep32 and tensor.is_floating_point() and keep32 & set(name.split(".")):
            itemsize = 4  # from_pretrained upcasts these modules after loading
        sizes[id(tensor)] = tensor.numel() * itemsize
    parameters = sum(p.numel() for p in model.parameters())
    no_split = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [
        sum(sizes.get(id(t), 0) for t in (*m.parameters(), *m.buffers()))
        for m in model.modules()
        if type(m).__name__ in no_split
    ]
    largest = max([*blocks, *sizes.values(), 0])
    return Count(sum(sizes.values()), int(parameters), int(largest), "meta")


def _header(file: str) -> dict[str, Any]:
    with open(file, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        if size > 100_000_000:
            raise ValueError(f"{file} has an implausible safetensors header")
        header = json.loads(fh.read(size))
    if not isinstance(header, dict):
        raise ValueError(f"{file} has no safetensors header")
    return header


def _weight_files(path: str, suffixes: tuple[str, ...]) -> list[str]:
    index = os.path.join(path, "model.safetensors.index.json")
    if ".safetensors" in suffixes and os.path.isfile(index):
        # Sharded weights: the index names the shards (a folder may also hold
        # another copy, such as Mistral's consolidated.safetensors).
        with open(index) as fh:
            shards = sorted(set(json.load(fh)["weight_map"].values()))
        return [os.path.join(path, n) for n in shards]
    names = sorted(n for n in os.listdir(path) if n.endswith(suffixes))
    # A folder may hold several copies of the weights (safetensors beside .bin):
    # the loader reads one format, safetensors when there is any.
    safet = [n for n in names if n.endswith(".safetensors")]
    chosen = safet or names
    return [os.path.join(path, n) for n in chosen if not n.startswith("training_args")]


def _from_safetensors(path: str, dtype: str, config: dict[str, Any]) -> Count | None:
    files = _weight_files(path, (".safetensors",))
    if not files:
        return None
    target = _ITEMSIZE[dtype]
    tied = bool(config.get("tie_word_embeddings", True))
    total = parameters = largest = 0
    for file in files:
        for name, info in _header(file).items():
            if name == "__metadata__":
                continue
            if tied and name == "lm_head.weight":
                continue  # tied to the input embeddings: one tensor in memory
            numel = 1
            for dim in info["shape"]:
                numel *= int(dim)
            itemsize, converted = _ST_DTYPES.get(info["dtype"], (4, True))
            size = numel * (target if converted else itemsize)
            total += size
            parameters += numel
            largest = max(largest, size)
    return Count(total, parameters, largest, "safetensors")


def _from_file_sizes(path: str, dtype: str, config: dict[str, Any]) -> Count | None:
    files = _weight_files(path, _WEIGHT_SUFFIXES)
    if not files:
        return None
    stored = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    stored_size = _ITEMSIZE.get(stored.removeprefix("torch."), 4)
    size = sum(os.path.getsize(f) for f in files)
    return Count(int(size * _ITEMSIZE[dtype] / stored_size), size // stored_size, 0, "file sizes")


@dataclass(frozen=True)
class Estimate:
    """The memory a load will take, known before any weight is read.

    Attributes
    ----------
    source : str
        What was estimated.
    memory : int
        Bytes of weights and buffers once loaded, in ``dtype``.
    parameters : int
        Number of parameters.
    dtype, device : str
        The resolved dtype and device.
    method : str
        ``"meta"`` (built from the config with empty weights), ``"safetensors"``
        (the files' headers) or ``"file sizes"``.
    largest_block : int
        The largest piece accelerate will not split across devices (bytes).
    """

    source: str
    memory: int
    parameters: int
    dtype: str
    device: str
    method: str
    largest_block: int = 0

    _METHODS = {"meta": "from the config", "safetensors": "from the safetensors headers",
                "file sizes": "from the weight files' sizes"}

    def __str__(self) -> str:
        how = self._METHODS.get(self.method, self.method)
        return (f"about {format_size(self.memory)} for {self.source!r} "
                f"({format_count(self.parameters)} parameters, {self.dtype} on {self.device}; "
                f"{how})")

    def __int__(self) -> int:
        return self.memory

    def __repr__(self) -> str:
        return f"Estimate: {self}"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))

    def _repr_html_(self) -> str:
        return f"<p class='llm-magic-estimate'>Estimate: {escape(str(self))}</p>"


def estimate_path(path: str, *, source: str, dtype: str, device: str,
                  trust_remote_code: bool = False) -> Estimate:
    """Estimate a model directory for an already resolved dtype and device.

    Raises
    ------
    LLMMagicError
        When neither the config nor the weight files say how big the model is.
    """
    found = count_model(path, dtype, trust_remote_code)
    if found is None:
        raise LLMMagicError(
            f"Cannot estimate {source!r}: its config does not build a causal LM here and the "
            "folder has no weight files (.safetensors, .bin) to measure."
        )
    return Estimate(source, found.memory, found.parameters, dtype, device, found.method,
                    found.largest_block)
