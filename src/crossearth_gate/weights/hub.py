"""The Hugging Face hub as timm uses it: what is already in the local hub cache, and whether the hub answers.

Nothing here may hang a machine without network: the offline switch (``HF_HUB_OFFLINE``) is honoured and
the reachability probe is one HTTP request bounded by a short timeout (name resolution included).
"""

from __future__ import annotations

import http.client
import threading
from pathlib import Path
from urllib.parse import urlparse

import timm
from huggingface_hub import constants, try_to_load_from_cache

HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def hub_repo(backbone: str) -> str | None:
    """The hub repository timm downloads ``backbone``'s default pretrained weights from."""
    try:
        cfg = timm.models.get_pretrained_cfg(backbone)
    except Exception:  # unknown name or no pretrained config
        return None
    return getattr(cfg, "hf_hub_id", None) if cfg is not None else None


def cached_hub_file(backbone: str) -> Path | None:
    """The weights file of ``backbone`` in the local hub cache, if a previous download left it there."""
    repo = hub_repo(backbone)
    if not repo:
        return None
    for filename in HUB_FILES:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def hub_reachable(timeout: float = 3.0) -> bool:
    """False at once when offline mode is on; else whether the hub answers one HTTP request in time.

    A bare TCP connect is not enough: a proxy or firewall that accepts connections and never answers
    would send timm into minutes of retried downloads (one warning per retry) before the same failure.
    """
    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    https = url.scheme == "https"
    host, port = url.hostname or "huggingface.co", url.port or (443 if https else 80)
    result: list[bool] = []

    def probe() -> None:
        connection = (http.client.HTTPSConnection if https else http.client.HTTPConnection)(host, port, timeout=timeout)
        try:
            connection.request("HEAD", "/")
            connection.getresponse()
            result.append(True)
        except (OSError, http.client.HTTPException):
            result.append(False)
        finally:
            connection.close()

    thread = threading.Thread(target=probe, daemon=True)  # getaddrinfo ignores socket timeouts
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])
