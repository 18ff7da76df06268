"""Classify a model source and derive a readable default name."""

from __future__ import annotations

import os
import re
from typing import Any

from ..errors import InvalidOptionError, ModelNotFoundError

__all__ = ["check_load_options", "check_name", "classify", "default_name"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")
_NAME = re.compile(r"^[A-Za-z0-9_][\w.\-:/]*$")


def classify(source: str) -> tuple[str, str | None]:
    """Return ``(kind, path)``: kind is "demo", "local", "hub" or "url".

    Examples
    --------
    >>> classify("gpt2")
    ('hub', None)
    >>> classify("http://127.0.0.1:8000/v1")
    ('url', None)
    """
    if not isinstance(source, str) or not source.strip():
        raise InvalidOptionError("Name a model to load: 'demo', 'demo-translator', a local "
                                 "directory or a hub id.")
    source = source.strip()
    if source == "demo":
        from ..demo import MODEL_DIR

        return "demo", str(MODEL_DIR)
    if source == "demo-translator":  # the bundled encoder–decoder: dates to ISO 8601
        from ..demo import TRANSLATOR_DIR

        return "demo", str(TRANSLATOR_DIR)
    if source.startswith(("http://", "https://")):
        return "url", None
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ModelNotFoundError(
                f"Directory {source!r} has no config.json, so it is not a transformers model "
                "directory. Point at the folder that holds config.json and the weights."
            )
        return "local", os.path.abspath(path)
    looks_like_path = source.startswith(("/", "./", "../", "~", "\\")) or os.sep + os.sep in source
    if looks_like_path or os.path.exists(path) or source.count("/") > 1:
        raise ModelNotFoundError(
            f"No model directory at {source!r}. Check the path, or give a hub id like 'gpt2'."
        )
    if not _HUB_ID.match(source):
        raise ModelNotFoundError(
            f"{source!r} is neither a local directory, nor a hub id (like 'org/model'), nor "
            "'demo', nor an http(s) URL."
        )
    return "hub", None


def default_name(source: str, kind: str, path: str | None) -> str:
    """A short, readable name: 'demo', a directory's or a hub repo's last part, a URL's host."""
    if kind == "demo":
        return source.strip()
    if kind == "url":
        from urllib.parse import urlparse

        parsed = urlparse(source)
        return parsed.netloc or source
    if kind == "local" and path is not None:
        parts = os.path.normpath(path).split(os.sep)
        # A cache snapshot: .../models--org--name/snapshots/<commit>
        if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
            return parts[-3].split("--")[-1]
        return parts[-1]
    return source.rstrip("/").split("/")[-1]


def check_name(name: str) -> str:
    """Validate a user-chosen model name."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidOptionError(
            f"Model name {name!r} is not usable: use letters, digits and _ . - : / "
            "without spaces."
        )
    return name


def check_load_options(source: str, kind: str, *, revision: str | None, model: str | None,
                       api_key_env: str | None, trust_remote_code: Any) -> None:
    """Refuse options that do not apply to this kind of source, before anything loads."""
    if kind != "url" and (model is not None or api_key_env is not None):
        raise InvalidOptionError(
            "model= and api_key_env= apply to a model served at a URL; "
            f"{source!r} is loaded in this kernel."
        )
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise InvalidOptionError(f"model must be the served model's id, not {model!r}.")
    if revision is not None and kind != "hub":
        raise InvalidOptionError(
            f"revision={revision!r} applies to hub models; {source!r} is "
            + ("a served model (its server chose the weights)." if kind == "url"
               else "a local model.")
        )
    if not isinstance(trust_remote_code, bool):
        raise InvalidOptionError("trust_remote_code must be True or False.")
