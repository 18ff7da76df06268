"""Hugging Face Hub resolution: the local cache first, a download only when a network is there.

Nothing here imports torch; ``huggingface_hub`` is imported inside the
functions that need it.
"""

from __future__ import annotations

import logging
import os
import socket
from urllib.parse import urlparse

from ..errors import MissingDependencyError, ModelNotFoundError

__all__ = ["commit_of", "config_dir", "offline", "resolve_hub"]

log = logging.getLogger("llm_magic.hf")


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` forbid downloads."""
    return any(
        os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _reachable(url: str, timeout: float = 3.0) -> bool:
    parsed = urlparse(url)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def commit_of(path: str) -> str | None:
    """The commit hash of a Hugging Face cache snapshot directory, if ``path`` is one.

    Examples
    --------
    >>> commit_of("/cache/models--org--m/snapshots/" + "a" * 40)
    'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'
    """
    parts = os.path.normpath(path).split(os.sep)
    if len(parts) >= 2 and parts[-2] == "snapshots" and len(parts[-1]) == 40:
        return parts[-1]
    return None


def resolve_hub(repo_id: str, revision: str | None) -> tuple[str, str | None]:
    """Find a hub model in the local cache, or download it when the network allows.

    Returns the snapshot directory and its commit hash. Never hangs without a
    network: the cache is consulted first, and a download is only tried after
    a three-second reachability check.
    """
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as exc:  # pragma: no cover - comes with transformers
        raise MissingDependencyError("Loading hub models needs `huggingface_hub`.") from exc

    from huggingface_hub import constants

    cache = constants.HF_HUB_CACHE
    try:
        path = snapshot_download(repo_id, revision=revision, local_files_only=True)
        return path, commit_of(path)
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        pass
    at = f" at revision {revision!r}" if revision else ""
    if offline():
        raise ModelNotFoundError(
            f"Model {repo_id!r}{at} is not in the local Hugging Face cache ({cache}) and "
            "HF_HUB_OFFLINE is set, so it cannot be downloaded. Download it where there is a "
            f"network (`hf download {repo_id}`), or pass a local directory to load."
        )
    endpoint = constants.ENDPOINT
    if not _reachable(endpoint):
        raise ModelNotFoundError(
            f"Model {repo_id!r}{at} is not in the local Hugging Face cache ({cache}) and "
            f"{endpoint} cannot be reached. Pass a local directory, or download the model "
            "where there is a network; set HF_HUB_OFFLINE=1 to skip this network check."
        )
    log.info("Downloading %s%s from %s", repo_id, at, endpoint)
    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            ignore_patterns=["*.onnx", "*.msgpack", "*.h5", "*.ot", "*.tflite", "*.gguf",
                             "original/*"],
        )
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise ModelNotFoundError(f"Model {repo_id!r}{at} was not found on {endpoint}.") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise ModelNotFoundError(f"Downloading {repo_id!r}{at} failed: {exc}") from exc
    return path, commit_of(path)


def config_dir(repo_id: str, revision: str | None) -> str:
    """The cached snapshot of a hub model, or a folder with just its config (for estimates)."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return str(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        pass
    try:
        return os.path.dirname(hf_hub_download(repo_id, "config.json", revision=revision))
    except Exception as exc:
        raise ModelNotFoundError(
            f"Cannot estimate {repo_id!r}: it is not in the local Hugging Face cache and its "
            f"config cannot be fetched ({type(exc).__name__}). Download it first, or pass a "
            "local directory."
        ) from exc
