"""What an attribution needs around its passes: the gradient check, the baseline, the notes.

Split from :mod:`llm_magic.backends._attribution`, which runs the passes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import InvalidOptionError, NotAvailableError

__all__ = ["baseline_of", "check_gradients", "describe"]


def check_gradients(model: Any) -> None:
    """Refuse a quantized layer whose input gradient is not that of its dequantized weight."""
    import torch

    seen: set[type] = set()
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, torch.nn.Linear) or weight is None:
            continue
        kind = type(weight)
        if kind in (torch.Tensor, torch.nn.Parameter) or kind in seen or not hasattr(
                weight, "dequantize"):
            continue
        seen.add(kind)
        dense = weight.dequantize().float()
        g = torch.Generator(device=dense.device).manual_seed(0)
        x = torch.randn(3, dense.shape[1], device=dense.device, generator=g, dtype=dense.dtype)
        x = x.to(weight.dtype).requires_grad_(True)
        up = torch.randn(3, dense.shape[0], device=dense.device, generator=g)
        try:
            (module(x).float() * up).sum().backward()
        except NotAvailableError:
            raise
        except Exception as exc:
            raise NotAvailableError(
                f"Gradients do not flow through the {kind.__name__} weights of this model "
                f"({type(exc).__name__}); attribute a model loaded without quantize=, or use "
                "method='occlusion'."
            ) from exc
        want = up @ dense
        got = x.grad
        if got is None or not torch.allclose(got.float(), want, rtol=1e-2, atol=1e-3):
            raise NotAvailableError(
                f"Gradients through the {kind.__name__} weights of this model are not those of "
                "its weights; attribute a model loaded without quantize=, or use "
                "method='occlusion'."
            )


def baseline_of(model: Any, embed: Any, spec: Any, length: int, pad_id: int | None,
              texts: Callable[[int], str], vocab: int) -> tuple[Any, str]:
    import torch

    x_like = embed.weight
    if spec == "zero":
        zero = torch.zeros(length, x_like.shape[1], dtype=x_like.dtype, device=x_like.device)
        return zero, ("the zero vector in place of every input token's embedding, the first "
                      "(BOS) token included")
    token = pad_id if spec == "pad" else spec
    if token is None:
        raise InvalidOptionError("This model has no pad token; pass baseline='zero' or a "
                                 "token id.")
    if not 0 <= int(token) < vocab:
        raise InvalidOptionError(f"baseline token {token} is not in the vocabulary "
                                 f"(ids 0 to {vocab - 1}).")
    with torch.no_grad():  # every position embedded (an encoder–decoder's differ by side)
        rows = embed(torch.full((length,), int(token), device=x_like.device))
    what = "the pad token " if spec == "pad" else "token "
    return rows.detach().clone(), (
        f"the embedding of {what}{int(token)} ({texts(int(token))!r}) in place of every input "
        "token's, the first (BOS) token included")


def describe(method: str, steps: int, contrast: bool, passes: int, model: Any,
           base_text: str | None, quantized: str | None) -> tuple[str, ...]:
    f = ("f = log p(a) - log p(b), in nats (contrast)" if contrast else
         "f = log p(token), in nats")
    notes = [f"{f}: the model's log-softmax at the position before each output token, in "
             "float32.",
             "Every input token is attributed, the first (BOS) one included; none is dropped."]
    notes.append({
        "saliency": "saliency: the L2 norm over the hidden dimension of df/d(embedding) "
                    "(nats per unit of embedding; never negative).",
        "input_x_gradient": "input x gradient: the sum over the hidden dimension of "
                            "embedding * df/d(embedding).",
        "integrated_gradients": f"integrated gradients: trapezoid rule over {steps} intervals "
                                "of the straight path from the baseline to the input "
                                "embeddings, at alpha = (k/steps)^3 (denser near the baseline; "
                                f"{steps + 1} gradient evaluations per output token).",
        "occlusion": "occlusion: f(x) - f(x with the input token's embedding replaced by the "
                     "baseline's); the token stays in place (not removed).",
    }[method])
    if base_text:
        notes.append(f"Baseline: {base_text}.")
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    if dtype != "float32":
        notes.append(f"The model computes in {dtype}: gradients carry its rounding.")
    if quantized:
        notes.append(f"The model's weights are {quantized}: these are the quantized model's "
                     "attributions.")
    what = "forward" if method == "occlusion" else "forward and backward"
    notes.append(f"{passes} batched {what} pass{'es' if passes != 1 else ''}.")
    return tuple(notes)
