"""Weight-only quantization of a loaded transformers model, and how far it moved the model.

torchao quantizes the weights of the linear layers, one layer at a time, on the
model's device; activations stay in the model's dtype:

- ``"int8"``: a byte per weight and a scale per output row (torchao's
  ``Int8WeightOnlyConfig``), on CPU and CUDA;
- ``"int4"``: half a byte per weight and a scale and zero point per group of
  :data:`~llm_magic.resources.estimate.INT4_GROUP` weights, computed in bfloat16
  by the tinygemm kernels (on CPU torchao's ``Int4OpaqueTensor``, on CUDA its
  ``Int4WeightOnlyConfig`` tile layout). The CPU kernel takes whole groups, so a
  layer's input is padded with zeros to a multiple of the group (:class:`Int4Linear`).

GPT-2's ``Conv1D`` layers (the bundled demo's) are linear layers with transposed
weights: they become ``nn.Linear`` first, checked on a probe to give the same
outputs before any weight is quantized. The output head and tied weights stay as
they are. Which layers is the rule of :mod:`llm_magic.resources.estimate`
(``quantizable_layers``), which also counts what each takes once quantized, so the
estimate before a load and the load agree.

:func:`divergence` compares two models' next-token distributions over a text
(``lm.quality``): top-1 agreement, KL in nats, each one's log-probabilities.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import (
    BackendError,
    InvalidOptionError,
    MissingDependencyError,
    NotAvailableError,
)
from ..resources.estimate import INT4_GROUP, layer_shape, quantizable_layers
from ._memory import release_memory
from .base import LoadSpec

__all__ = ["Int4Linear", "Quantized", "apply", "check", "facts", "footprint",
           "tensor_bytes"]

log = logging.getLogger("llm_magic.hf")

_INSTALL = "pip install 'llm_magic[quant]' (or pip install torchao)"


@dataclass(frozen=True)
class Quantized:
    """What quantizing a model did: which scheme, how many layers, their bytes before and after.

    ``parameters`` is the model's parameter count before (padding an int4 layer's
    input adds none).
    """

    scheme: str
    layers: int
    before: int
    after: int
    parameters: int

    @property
    def saved(self) -> int:
        """Bytes the quantized layers gave back."""
        return self.before - self.after


# -- before a load -----------------------------------------------------------------------


def check(spec: LoadSpec) -> None:
    """Refuse a quantized load that cannot work, before a weight is read or a model evicted."""
    scheme = spec.quantize
    if importlib.util.find_spec("torchao") is None:
        raise MissingDependencyError(
            f"quantize={scheme!r} needs torchao: {_INSTALL}, then restart the kernel."
        )
    device = spec.device
    if device != "cpu" and not device.startswith("cuda"):
        raise NotAvailableError(
            f"quantize={scheme!r} needs torchao's CPU or CUDA kernels; {device!r} has none. "
            "Load with device='cpu', or without quantize."
        )
    if scheme == "int4" and device.startswith("cuda"):
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:
            raise NotAvailableError(
                f"quantize='int4' on {device} needs torchao's tinygemm kernel, which needs a GPU "
                f"of compute capability 8.0 or newer (this one is {major}.{minor}). Use "
                "quantize='int8', or device='cpu'."
            )
    method = _already_quantized(spec.path)
    if method:
        raise InvalidOptionError(
            f"{spec.source!r} is already quantized ({method}); load it without quantize=."
        )


def _already_quantized(path: str | None) -> str | None:
    """The quantization method a checkpoint's config names, if it was saved quantized."""
    if not path:
        return None
    try:
        with open(os.path.join(path, "config.json")) as fh:
            config = json.load(fh)
    except (OSError, ValueError):
        return None
    found = config.get("quantization_config") if isinstance(config, dict) else None
    if not found:
        return None
    method = found.get("quant_method") if isinstance(found, dict) else None
    return str(method or "quantization_config in config.json")


# -- torchao ----------------------------------------------------------------------------


@functools.cache
def _torchao() -> Any:
    """torchao's quantization API (its import chatter is quieted in ``backends/__init__``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchao.quantization as quantization
            from torchao.prototype.quantization import int4 as prototype_int4
    except ImportError as exc:
        raise MissingDependencyError(
            f"Quantized loading needs torchao: {_INSTALL}, then restart the kernel ({exc})."
        ) from exc
    return quantization, prototype_int4


# -- quantizing a loaded model -----------------------------------------------------------


class Int4Linear(torch.nn.Module):
    """A linear layer whose weight torchao holds in 4 bits, computed in bfloat16.

    The input is padded with zeros to the packed width (a whole number of groups;
    the zero columns of the weight add nothing), cast to bfloat16 for the kernel,
    and the output cast back to the input's dtype before the bias is added. The
    kernel has no derivative: a pass that needs gradients through it is refused.
    """

    def __init__(self, weight: Any, bias: Any, in_features: int, out_features: int,
                 pad: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.pad = pad
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach(),
                                                                 requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            raise NotAvailableError(
                "Gradients do not flow through int4 weights (torchao's int4 kernel has no "
                "derivative); use a model loaded with quantize='int8' or without quantize."
            )
        dtype = x.dtype
        if self.pad:
            x = torch.nn.functional.pad(x, (0, self.pad))
        y = torch.nn.functional.linear(x.to(torch.bfloat16), self.weight).to(dtype)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, int4 in groups of {INT4_GROUP}")


def apply(model: Any, scheme: str, device: str) -> Quantized:
    """Quantize ``model``'s linear layers in place, each on ``device``; then move the rest there.

    The model may arrive on the CPU: each layer is quantized on ``device`` in turn,
    so a GPU never holds more than the quantized model and one layer at full size.
    """
    if len(set((getattr(model, "hf_device_map", None) or {}).values())) > 1:
        raise BackendError(
            "A quantized model is placed whole on one device; load it with device='cpu' or "
            "device='cuda:N'."
        )
    quantization, prototype_int4 = _torchao()
    parameters = int(sum(p.numel() for p in model.parameters()))
    _linear_from_conv1d(model)
    layers = quantizable_layers(model)
    before = after = 0
    with torch.no_grad():
        for name, layer in layers:
            before += tensor_bytes(layer.weight)
            layer.to(device)
            new = (_int8(layer, quantization) if scheme == "int8"
                   else _int4(layer, device, quantization, prototype_int4))
            if not _is_quantized(new.weight):  # torchao skips what it cannot take, quietly
                raise BackendError(
                    f"torchao left layer {name!r} ({_shape_text(layer)}) unquantized; "
                    f"load without quantize, or try quantize={_other(scheme)!r}."
                )
            _replace(model, name, new)
            after += tensor_bytes(new.weight)
        model.to(device)
        if device == "cpu":
            _own_the_rest(model)
    release_memory()  # the per-layer temporaries, from the C heap
    log.debug("quantized %d layers to %s: %d -> %d bytes", len(layers), scheme, before, after)
    return Quantized(scheme, len(layers), before, after, parameters)


def _own_the_rest(model: Any) -> None:
    """Copy the tensors left as they were (embeddings, norms, the head) out of the weight file.

    transformers maps a float32 checkpoint's file into memory and its tensors are
    views of it. Quantizing read every page of it, so the whole file stays resident
    as long as one tensor (the embeddings) still refers to the mapping: on a
    115 MB model, 110 MB more than the quantized model. Copies let it go.
    """
    for param in {id(p): p for p in model.parameters()}.values():
        if not _is_quantized(param):
            param.data = param.data.clone()
    for module in model.modules():
        for key, buffer in module._buffers.items():
            if buffer is not None and not _is_quantized(buffer):
                module._buffers[key] = buffer.clone()


def _is_quantized(tensor: Any) -> bool:
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    return bool(is_traceable_wrapper_subclass(tensor))


def _shape_text(layer: Any) -> str:
    out_features, in_features = layer_shape(layer)
    return f"{in_features} to {out_features} features"


def _other(scheme: str) -> str:
    return "int8" if scheme == "int4" else "int4"


def _replace(model: Any, name: str, new: Any) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _int8(layer: Any, quantization: Any) -> Any:
    quantization.quantize_(layer, quantization.Int8WeightOnlyConfig(set_inductor_config=False),
                           filter_fn=None)
    return layer


def _int4(layer: Any, device: str, quantization: Any, prototype_int4: Any) -> Int4Linear:
    out_features, in_features = layer.out_features, layer.in_features
    weight = layer.weight.detach().to(torch.bfloat16)
    pad = -in_features % INT4_GROUP
    if pad:  # whole groups; on CUDA torchao pads its tile layout further (to 1024 wide)
        weight = torch.nn.functional.pad(weight, (0, pad))
    holder = torch.nn.Linear(in_features + pad, out_features, bias=False, device="meta")
    if device.startswith("cuda"):
        config = quantization.Int4WeightOnlyConfig(
            group_size=INT4_GROUP, int4_packing_format="tile_packed_to_4d",
            set_inductor_config=False)
    else:
        config = prototype_int4.PrototypeInt4WeightOnlyConfig(group_size=INT4_GROUP,
                                                              set_inductor_config=False)
    holder.weight = torch.nn.Parameter(weight, requires_grad=False)
    quantization.quantize_(holder, config, filter_fn=None)
    return Int4Linear(holder.weight, layer.bias, in_features, out_features, pad)


def _linear_from_conv1d(model: Any) -> int:
    """Turn GPT-2's ``Conv1D`` layers into ``nn.Linear`` (transposed weight), checked exact.

    Each new layer must give the old one's output on a probe before anything is
    quantized; a layer that does not (a subclass computing otherwise) is refused.
    """
    from transformers.pytorch_utils import Conv1D

    converted = 0
    with torch.no_grad():
        for name, layer in [(n, m) for n, m in model.named_modules() if isinstance(m, Conv1D)]:
            n_in, n_out = layer.weight.shape
            w = layer.weight
            linear = torch.nn.Linear(n_in, n_out, bias=layer.bias is not None, device="meta")
            linear.weight = torch.nn.Parameter(w.detach().t().contiguous(),
                                               requires_grad=w.requires_grad)
            if layer.bias is not None:
                linear.bias = layer.bias
            probe = torch.randn(3, n_in, dtype=w.dtype, device=w.device,
                                generator=torch.Generator(w.device).manual_seed(0))
            if not torch.allclose(layer(probe), linear(probe), rtol=1e-5, atol=1e-6):
                raise BackendError(
                    f"Layer {name!r} ({type(layer).__name__}) does not compute as a linear "
                    "layer with its weight transposed; this model cannot be quantized. Load it "
                    "without quantize."
                )
            _replace(model, name, linear)
            converted += 1
    return converted


# -- facts of a quantized model ------------------------------------------------------------


def tensor_bytes(tensor: Any) -> int:
    """Bytes a tensor really holds: a torchao tensor counts its inner ones (data, scales)."""
    if _is_quantized(tensor):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, n)) for n in names
                   if getattr(tensor, n, None) is not None)
    return int(tensor.numel() * tensor.element_size())


def footprint(model: Any) -> int:
    """Measured bytes of the model's weights and buffers (tied tensors once)."""
    seen: dict[int, int] = {}
    for tensor in (*model.parameters(), *model.buffers()):
        if id(tensor) not in seen:
            seen[id(tensor)] = tensor_bytes(tensor)
    return sum(seen.values())


def facts(model: Any, device: str, quantized: Quantized) -> dict[str, Any]:
    """What ``describe()`` reports of a quantized model (its memory counted as held)."""
    memory = footprint(model)
    return {"memory": memory, "placement": {device: memory}, "parameters": quantized.parameters,
            "quantization": quantized.scheme, "saved": quantized.saved}


# -- quality: two models' distributions over one text -------------------------------------
