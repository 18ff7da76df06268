"""Conversation caches kept between turns: the KV cache and the exact ids it holds.

A conversation's next turn is rendered to token ids from the whole message
list (its chat template may re-render earlier turns differently), so nothing
assumes the text only grows. :func:`reuse` finds the longest common prefix of
the kept ids and the new ones, crops the cache there and leaves the rest to
prefill. A layer that cannot rewind (a sliding window already past its size)
makes the turn recompute from nothing, and the turn says so.

After a turn (finished, stopped or interrupted) :func:`settle` crops every
layer to the tokens whose forward pass really completed on all layers, so an
interrupted turn leaves a cache the next turn can trust.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TRANSCRIPT_STOP", "Kept", "KeptCaches", "Reuse", "common_prefix", "reuse", "settle",
           "transcript"]


@dataclass
class Kept:
    """One conversation's cache: ``ids`` are the tokens whose keys and values it holds."""

    cache: Any
    ids: list[int]
    used: float = field(default_factory=time.time)

    @property
    def nbytes(self) -> int:
        return cache_bytes(self.cache)


@dataclass(frozen=True)
class Reuse:
    """What a turn takes from its kept cache: the cache (None: start afresh) and how much."""

    cache: Any
    reused: int
    note: str = ""


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _layers(cache: Any) -> list[Any]:
    return list(getattr(cache, "layers", ()))


def _length(layer: Any) -> int:
    return int(layer.get_seq_length()) if getattr(layer, "is_initialized", False) else 0


def _recording(layer: Any) -> bool:
    """A sliding layer that still holds every past token (see :func:`new_cache`)."""
    keys = getattr(layer, "keys", None)
    return bool(getattr(layer, "record_past", False)) and (
        keys is None or int(keys.shape[-2]) == _length(layer))


def _can_rewind(layer: Any, remove: int) -> bool:
    """A sliding layer that kept only its window cannot bring dropped tokens back."""
    if remove <= 0 or not getattr(layer, "is_sliding", False) or _recording(layer):
        return True
    return _length(layer) < int(layer.sliding_window)


def _crop(layer: Any, to: int) -> bool:
    """Crop one layer to ``to`` tokens; False if it cannot be done exactly."""
    remove = _length(layer) - to
    if remove < 0:
        return False
    if remove and not _can_rewind(layer, remove):
        return False
    if remove and getattr(layer, "is_sliding", False) and _recording(layer):
        # transformers' crop would also cut the layer back to its window; keep the past.
        layer.keys, layer.values = layer.keys[..., :to, :], layer.values[..., :to, :]
        layer.cumulative_length = to
    elif remove:
        layer.crop(-remove)
    return True


def new_cache(config: Any) -> Any:
    """An empty cache for a conversation's first turn.

    Its sliding-window layers record their past (the whole conversation, not only
    the window), so a later turn whose template re-renders recent text can rewind
    them exactly: a conversation's cache is a full cache on every layer.
    """
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    for layer in _layers(cache):
        if getattr(layer, "is_sliding", False):
            layer.activate_past_recording()
    return cache


def reuse(kept: Kept | None, ids: Sequence[int], note: str = "") -> Reuse:
    """Crop ``kept`` to its longest common prefix with ``ids``; at least one id stays to compute."""
    if kept is None:
        return Reuse(None, 0, note)
    n = min(common_prefix(kept.ids, ids), len(ids) - 1)
    if n <= 0:
        return Reuse(None, 0, note)
    layers = _layers(kept.cache)
    if not layers or not all(_can_rewind(layer, _length(layer) - n) for layer in layers):
        return Reuse(None, 0, note or "recomputed: a sliding-window layer cannot rewind that far")
    for layer in layers:
        _crop(layer, n)
    kept.ids = list(ids[:n])
    return Reuse(kept.cache, n, note)


def settle(cache: Any, ids: Sequence[int]) -> Kept | None:
    """The cache after a turn, cropped to what every layer computed; None if unusable."""
    layers = _layers(cache)
    if not layers:
        return None
    n = min([_length(layer) for layer in layers] + [len(ids)])
    if n <= 0 or not all(_crop(layer, n) for layer in layers):
        return None
    return Kept(cache, list(ids[:n]))


#: The line a model without a chat template writes its replies on (see :func:`transcript`).
TRANSCRIPT_STOP = "\nUser:"


def transcript(messages: Sequence[tuple[str, str]]) -> str:
    """The plain transcript of ``messages`` (a model without a chat template reads this).

    The system text on its own line, then ``User: <message>`` and
    ``Assistant:<reply>`` lines, ending with ``Assistant:`` for the model to
    continue. A reply is kept exactly as the model wrote it after the colon
    (usually starting with a space), so the next turn's ids match the cache.

    Examples
    --------
    >>> transcript([("system", "Be brief."), ("user", "Hi"), ("assistant", " Hello."),
    ...             ("user", "Bye")])
    'Be brief.\nUser: Hi\nAssistant: Hello.\nUser: Bye\nAssistant:'
    """
    parts = []
    for role, text in messages:
        if role == "system":
            parts.append(f"{text}\n")
        elif role == "assistant":
            parts.append(f"Assistant:{text}\n")
        else:
            parts.append(f"User: {text}\n")
    return "".join(parts) + "Assistant:"


def cache_bytes(cache: Any) -> int:
    """Bytes of the tensors a cache holds (each storage once: a cropped view keeps all of it)."""
    seen: dict[int, int] = {}
    for layer in _layers(cache):
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if tensor is None or not hasattr(tensor, "untyped_storage"):
                continue
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def bytes_for(config: Any, dtype_bytes: int, tokens: int) -> int:
    """Bytes a conversation cache of ``tokens`` tokens takes: L x 2 x T x kv_heads x head_dim
    x dtype bytes (its sliding-window layers keep the past too, see :func:`new_cache`)."""
    config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = getattr(config, "head_dim", None) or (
        int(config.hidden_size) // heads if heads else 0)
    return layers * 2 * kv_heads * int(head_dim) * dtype_bytes * tokens


def copy_cache(cache: Any) -> Any:
    """An independent copy (a fork's): its layers' tensors cloned."""
    import copy

    twin = copy.copy(cache)
    twin.layers = []
    for layer in _layers(cache):
        new = copy.copy(layer)
        for attr in ("keys", "values"):
            tensor = getattr(layer, attr, None)
            if tensor is not None and hasattr(tensor, "clone"):
                setattr(new, attr, tensor.clone())
        twin.layers.append(new)
    return twin


class KeptCaches:
    """A backend's kept caches by conversation key, least recently used first."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, Kept] = OrderedDict()
        #: Why a conversation's cache is gone (said once, by its next turn).
        self._notes: dict[str, str] = {}

    def get(self, key: str) -> Kept | None:
        return self._items.get(key)

    def note(self, key: str) -> str:
        """Why ``key``'s cache was dropped, once; "" if it was not."""
        return self._notes.pop(key, "")

    def put(self, key: str, kept: Kept | None) -> None:
        self._items.pop(key, None)
        if kept is not None:
            self._items[key] = kept

    def pop(self, key: str) -> Kept | None:
        self._notes.pop(key, None)
        return self._items.pop(key, None)

    def fork(self, key: str, new: str) -> None:
        kept = self._items.get(key)
        if kept is not None:
            self._items[new] = Kept(copy_cache(kept.cache), list(kept.ids))

    def nbytes(self, key: str | None = None) -> int:
        if key is not None:
            kept = self._items.get(key)
            return 0 if kept is None else kept.nbytes
        return sum(k.nbytes for k in self._items.values())

    def idle(self) -> list[tuple[float, str, int]]:
        """(last used, key, bytes) of every kept cache: none is in a turn (a turn takes its out)."""
        return [(k.used, key, k.nbytes) for key, k in list(self._items.items())]

    def drop(self, key: str, reason: str) -> int:
        """Drop ``key``'s cache, remembering ``reason`` for its next turn; the bytes freed."""
        kept = self._items.pop(key, None)
        if kept is None:
            return 0
        self._notes[key] = reason
        return kept.nbytes

    def clear(self) -> None:
        self._items.clear()
        self._notes.clear()

    def keys(self) -> list[str]:
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)
