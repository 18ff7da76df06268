"""Devices and dtypes of the transformers backend, in llm_magic's own words.

``"auto"`` resolves to the best device torch sees; dtype names have one
spelling each; accelerate's device names (``0``, ``"cpu"``, ``"disk"``) are
written as llm_magic writes them (``"cuda:0"``).
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidOptionError, MissingDependencyError, NotAvailableError

__all__ = ["bytes_per_device", "device_name", "device_order", "resolve_device", "resolve_dtype",
           "torch_module"]

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def torch_module() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a dependency
        raise MissingDependencyError(
            "The transformers backend needs PyTorch. Install it with `pip install torch`."
        ) from exc
    return torch


def resolve_device(device: str) -> str:
    """Turn ``"auto"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``"cpu"`` into a concrete device.

    Examples
    --------
    >>> resolve_device("cpu")
    'cpu'
    """
    torch = torch_module()
    wanted = (device or "auto").strip().lower()
    if wanted == "auto":
        if torch.cuda.is_available():
            return "cuda:0"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    if wanted == "cpu":
        return "cpu"
    if wanted == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise NotAvailableError("Apple MPS is not available on this machine; use device='cpu'.")
        return "mps"
    if wanted == "gpu":
        wanted = "cuda"
    if wanted.startswith("cuda"):
        index_text = wanted[4:].lstrip(":") or "0"
        if not index_text.isdigit():
            raise InvalidOptionError(f"Unknown device {device!r}: write 'cuda' or 'cuda:N'.")
        if not torch.cuda.is_available():
            raise NotAvailableError(
                f"Device {device!r} asked for, but CUDA is not available here "
                f"(torch {torch.__version__}). Use device='cpu' or device='auto'."
            )
        count = torch.cuda.device_count()
        if int(index_text) >= count:
            raise InvalidOptionError(
                f"Device {device!r} does not exist: this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}."
            )
        return f"cuda:{int(index_text)}"
    raise InvalidOptionError(
        f"Unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'."
    )


def resolve_dtype(dtype: str, device: str) -> str:
    """Pick the dtype name for a resolved device: float32 on CPU, bf16 (or fp16) on a GPU.

    Examples
    --------
    >>> resolve_dtype("auto", "cpu"), resolve_dtype("bf16", "cpu")
    ('float32', 'bfloat16')
    """
    wanted = (dtype or "auto").strip().lower().removeprefix("torch.")
    if wanted == "auto":
        if device.startswith("cuda"):
            torch = torch_module()
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        if device == "mps":
            return "float16"
        return "float32"
    if wanted not in _DTYPES:
        raise InvalidOptionError(
            f"Unknown dtype {dtype!r}: use 'auto', 'float32', 'bfloat16' or 'float16'."
        )
    return _DTYPES[wanted]



def device_name(device: Any) -> str:
    """accelerate's device names (0, "cpu", "disk") as llm_magic writes them ("cuda:0")."""
    return f"cuda:{device}" if isinstance(device, int) else str(device)


def device_order(device: Any) -> tuple[int, str]:
    name = device_name(device)
    return (0 if name.startswith("cuda") else 1 if name == "cpu" else 2, name)


def bytes_per_device(model: Any, device: str) -> dict[str, int]:
    """Measured bytes of weights and buffers on each device (one entry unless spread)."""
    device_map = getattr(model, "hf_device_map", None) or {}
    if len(set(device_map.values())) <= 1:
        return {device: int(model.get_memory_footprint())}
    out: dict[str, int] = {}
    seen: set[int] = set()
    for prefix, where in device_map.items():
        module = model.get_submodule(prefix) if prefix else model
        size = 0
        for tensor in (*module.parameters(), *module.buffers()):
            if id(tensor) not in seen:  # tied weights count once
                seen.add(id(tensor))
                size += tensor.numel() * tensor.element_size()
        name = device_name(where)
        out[name] = out.get(name, 0) + size
    return dict(sorted(out.items(), key=lambda kv: device_order(kv[0])))
