"""The user cache: where files derived once and reused across runs live (converted weights, burnt labels)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

CACHE_ENV = "CEG_CACHE_DIR"


def cache_dir(kind: str, env_is_the_folder: bool = False) -> Path:
    """The folder of one ``kind`` of cached file: ``~/.cache/crossearth-gate/<kind>`` on Linux (the platform's
    user cache), or ``$CEG_CACHE_DIR/<kind>`` when the variable is set.

    ``env_is_the_folder``: ``$CEG_CACHE_DIR`` itself is the folder, without ``<kind>``. The weights cache
    took the variable that way before other kinds shared it; kept so that caches users filled stay found.
    """
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override) if env_is_the_folder else Path(override) / kind
    return Path(platformdirs.user_cache_dir("crossearth-gate")) / kind
