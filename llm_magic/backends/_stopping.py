"""Stopping a transformers generation: at an interrupt, within one layer, or at a stop string."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ._devices import torch_module

if TYPE_CHECKING:
    import torch

__all__ = ["EventCriteria", "Interrupted", "StopStrings", "criteria_list", "layer_list",
           "stop_hooks"]


class Interrupted(Exception):
    """Raised inside the model's forward pass to stop at once."""


def layer_list(model: Any) -> Sequence[Any]:
    """The model's largest ``ModuleList``: its stack of blocks, where stopping is checked."""
    torch = torch_module()
    best: Sequence[Any] = ()
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > len(best):
            best = module
    return best


@contextlib.contextmanager
def stop_hooks(model: Any, stop_event: threading.Event) -> Iterator[None]:
    """Check ``stop_event`` before every block, so an interrupt lands within one layer."""

    def check(_module: Any, _args: Any) -> None:
        if stop_event.is_set():
            raise Interrupted

    handles = [layer.register_forward_pre_hook(check) for layer in layer_list(model)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()



def criteria_list(items: list[Any]) -> Any:
    from transformers import StoppingCriteriaList

    return StoppingCriteriaList(items)


class EventCriteria:
    """A ``StoppingCriteria`` that stops the batch once an Event is set."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        torch = torch_module()
        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


class StopStrings:
    """Stop a row once its *generated* text contains a stop string.

    transformers' own ``stop_strings`` also matches across the end of the
    prompt; a user's stop string is about the new text only.
    """

    def __init__(self, tokenizer: Any, prompt_len: int, stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.stops = tuple(stops)
        # A character is at most 4 byte-level tokens; one more token for a boundary.
        self.window = 4 * max(len(s) for s in stops) + 1

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        torch = torch_module()
        new = input_ids[:, self.prompt_len :]
        tails = self.tokenizer.batch_decode(new[:, -self.window :], skip_special_tokens=True)
        done = [any(s in tail for s in self.stops) for tail in tails]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
