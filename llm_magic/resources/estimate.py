"""Count a model's bytes before reading its weights.

Three ways, best first: build the model from its config on torch's ``meta``
device (no memory, exact shapes, buffers and tied weights included); read the
safetensors headers (shapes and dtypes, no data); scale the weight files' sizes.

Weight-only quantization (``quantize="int8"`` or ``"int4"``) is counted here too,
layer by layer: :func:`quantizable_layers` says which layers the backend
quantizes and :func:`quantized_bytes` what each then takes. The backend uses the
same two functions, so the estimate and the load follow one rule.
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
from ..errors import InvalidOptionError, LLMMagicError

__all__ = ["INT4_GROUP", "QUANTIZE_SCHEMES", "Count", "Estimate", "check_quantize", "count_model",
           "estimate_path", "is_encoder_only", "layer_shape", "quantizable_layers",
           "quantized_bytes"]

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

#: Weight-only quantization schemes a load may ask for (``quantize=``).
QUANTIZE_SCHEMES = ("int8", "int4")
#: Weights per scale and zero point in int4 (the input width is padded to a multiple).
INT4_GROUP = 64


def check_quantize(value: Any) -> str | None:
    """``quantize=`` normalised: None, ``"int8"`` or ``"int4"``; anything else is refused.

    Examples
    --------
    >>> check_quantize("INT8"), check_quantize(None)
    ('int8', None)
    """
    if value is None:
        return None
    wanted = value.strip().lower() if isinstance(value, str) else value
    if wanted in ("", "none", "no", "off"):
        return None
    if wanted not in QUANTIZE_SCHEMES:
        raise InvalidOptionError(
            f"Unknown quantize={value!r}: use 'int8' (weights in 8 bits, about half of "
            "bfloat16), 'int4' (about a quarter) or None (weights as stored)."
        )
    return str(wanted)


def quantizable_layers(model: Any) -> list[tuple[str, Any]]:
    """The layers weight-only quantization replaces, by name.

    Every linear layer (``torch.nn.Linear``, and GPT-2's ``Conv1D``, a linear layer
    with its weight transposed) except the output head and any layer whose weight
    another module shares (a tied head): those stay as they are.
    """
    import torch
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    uses: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        uses[id(param)] = uses.get(id(param), 0) + 1
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not head
            and uses.get(id(module.weight), 0) == 1]


def layer_shape(module: Any) -> tuple[int, int]:
    """A linear layer's (out features, in features), whichever way its weight is stored."""
    rows, cols = (int(n) for n in module.weight.shape)
    return (cols, rows) if type(module).__name__ == "Conv1D" else (rows, cols)


def quantized_bytes(out_features: int, in_features: int, scheme: str, device: str) -> int:
    """Bytes of one linear layer's weight once quantized (its bias is left as it was).

    int8: a byte per weight, and a float32 scale and an int8 zero point per output
    row. int4: half a byte per weight, the input width padded to a multiple of
    :data:`INT4_GROUP` (on CUDA, torchao's tinygemm layout pads it to 1024 and the
    output to 8), and a bfloat16 scale and zero point per group of weights.

    Examples
    --------
    >>> quantized_bytes(176, 176, "int8", "cpu"), quantized_bytes(176, 176, "int4", "cpu")
    (31856, 19008)
    """
    if scheme == "int8":
        return out_features * in_features + out_features * 5
    tile = 1024 if device.startswith("cuda") else INT4_GROUP
    width = -(-in_features // tile) * tile
    rows = -(-out_features // 8) * 8 if device.startswith("cuda") else out_features
    return rows * width // 2 + (width // INT4_GROUP) * rows * 4


@dataclass(frozen=True)
class Count:
    """What a counting method found."""

    memory: int
    parameters: int
    largest_block: int
    method: str


def count_model(path: str, dtype: str, trust_remote_code: bool = False,
                quantize: str | None = None, device: str = "cpu") -> Count | None:
    """Bytes the weights of the model at ``path`` take in ``dtype``; None if nothing worked.

    With ``quantize``, the layers the backend quantizes count at their quantized size.
    """
    try:
        return _from_meta(path, dtype, trust_remote_code, quantize, device)
    except Exception as exc:  # any model class can fail on meta; fall back to the files
        log.debug("meta-device estimate of %s failed: %r", path, exc)
    config = _config_dict(path)
    for method in (_from_safetensors, _from_file_sizes):
        try:
            found = method(path, dtype, config, quantize, device)
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


def _from_meta(path: str, dtype: str, remote: bool, quantize: str | None = None,
               device: str = "cpu") -> Count:
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    config = AutoConfig.from_pretrained(path, trust_remote_code=remote)
    if getattr(config, "is_encoder_decoder", False):
        auto = AutoModelForSeq2SeqLM
    else:
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
    if quantize:
        for _, layer in quantizable_layers(model):
            sizes[id(layer.weight)] = quantized_bytes(*layer_shape(layer), quantize, device)
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


#: Tensors the quantized-size rule leaves alone when only the files' headers are known.
_NOT_QUANTIZED = ("embed", "wte", "wpe", "lm_head", "norm", "ln_")


def _from_safetensors(path: str, dtype: str, config: dict[str, Any], quantize: str | None = None,
                      device: str = "cpu") -> Count | None:
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
            shape = [int(d) for d in info["shape"]]
            if (quantize and converted and len(shape) == 2 and name.endswith(".weight")
                    and not any(part in name for part in _NOT_QUANTIZED)):
                size = quantized_bytes(shape[0], shape[1], quantize, device)
            total += size
            parameters += numel
            largest = max(largest, size)
    return Count(total, parameters, largest, "safetensors")


def _from_file_sizes(path: str, dtype: str, config: dict[str, Any], quantize: str | None = None,
                     device: str = "cpu") -> Count | None:
    files = _weight_files(path, _WEIGHT_SUFFIXES)
    if not files:
        return None
    stored = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    stored_size = _ITEMSIZE.get(stored.removeprefix("torch."), 4)
    size = sum(os.path.getsize(f) for f in files)
    # Quantized, most of the bytes shrink to about a byte (int8) or 0.56 byte (int4) per weight.
    per_weight = {"int8": 1.0, "int4": 0.5625}.get(quantize or "", float(_ITEMSIZE[dtype]))
    return Count(int(size * per_weight / stored_size), size // stored_size, 0, "file sizes")


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
    quantize : str or None
        ``"int8"`` or ``"int4"`` when the linear layers are counted quantized.
    """

    source: str
    memory: int
    parameters: int
    dtype: str
    device: str
    method: str
    largest_block: int = 0
    quantize: str | None = None

    _METHODS = {"meta": "from the config", "safetensors": "from the safetensors headers",
                "file sizes": "from the weight files' sizes"}

    def __str__(self) -> str:
        how = self._METHODS.get(self.method, self.method)
        weights = f"{self.quantize} weights, " if self.quantize else ""
        return (f"about {format_size(self.memory)} for {self.source!r} "
                f"({format_count(self.parameters)} parameters, {weights}{self.dtype} on "
                f"{self.device}; {how})")

    def __int__(self) -> int:
        return self.memory

    def __repr__(self) -> str:
        return f"Estimate: {self}"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))

    def _repr_html_(self) -> str:
        return f"<p class='llm-magic-estimate'>Estimate: {escape(str(self))}</p>"


def estimate_path(path: str, *, source: str, dtype: str, device: str,
                  trust_remote_code: bool = False, quantize: str | None = None) -> Estimate:
    """Estimate a model directory for an already resolved dtype and device.

    ``quantize`` (``"int8"`` or ``"int4"``) counts the linear layers as the
    backend will quantize them.

    Raises
    ------
    LLMMagicError
        When neither the config nor the weight files say how big the model is.
    """
    found = count_model(path, dtype, trust_remote_code, quantize, device)
    if found is None:
        raise LLMMagicError(
            f"Cannot estimate {source!r}: its config does not build a causal LM here and the "
            "folder has no weight files (.safetensors, .bin) to measure."
        )
    return Estimate(source, found.memory, found.parameters, dtype, device, found.method,
                    found.largest_block, quantize)
