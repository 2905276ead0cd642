"""Finding pretrained weights in the local caches before anything touches the network.

Both libraries would otherwise retry the network for a minute on an offline machine, and
torch hub unpickles without restriction. Here a cached file is found first, checked to be
loadable without running code, and only a missing file is fetched.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from tlplug.errors import WeightsError, flag


def offline_message(what: str, reason: str) -> str:
    """The one-line message for pretrained weights that cannot be had."""
    return (
        f"cannot get pretrained weights for {what} ({reason}); pass {flag('weights', 'FILE')} "
        f"to load a local file, or {flag('pretrained', False)} to start from random weights"
    )


def hf_cached_file(repo_id: str, filenames: list[str]) -> str | None:
    """Return the path of the first of ``filenames`` in the Hugging Face cache for ``repo_id``."""
    from huggingface_hub import try_to_load_from_cache

    repo, _, revision = repo_id.partition("@")
    for filename in filenames:
        found = try_to_load_from_cache(repo, filename, revision=revision or None)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def hub_offline() -> bool:
    """True when the user has told Hugging Face to stay offline."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def host_reachable(host: str) -> bool:
    """Cheap check that ``host`` resolves, so an offline machine fails in a moment."""
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def torch_hub_file(url: str, what: str) -> Path:
    """Return the torch hub cache path for ``url``, downloading it (hash-checked) if missing.

    The file is then checked to load with ``weights_only=True``, so a tampered cache file
    is refused before any library unpickles it.
    """
    import torch

    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if not path.is_file():
        host = urlparse(url).hostname or ""
        if not host_reachable(host):
            raise WeightsError(
                offline_message(what, f"{host} cannot be reached, {path} is not cached")
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        found = re.search(r"-([a-f0-9]+)\.", path.name)  # torch hub's naming convention
        hash_prefix = found.group(1) if found else None
        try:
            torch.hub.download_url_to_file(url, str(path), hash_prefix=hash_prefix)
        except Exception as exc:
            raise WeightsError(offline_message(what, f"download failed: {exc}")) from None
    check_safe_pickle(path)
    return path


def check_safe_pickle(path: str | os.PathLike) -> None:
    """Raise :class:`WeightsError` unless ``path`` loads with ``torch.load(weights_only=True)``."""
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise WeightsError(
            f"refusing to load {path}: it is not a plain tensor checkpoint ({_short(exc)})"
        ) from None


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
