"""The user cache of converted weights: one timm-layout safetensors file per (backbone, source)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

CACHE_ENV = "CEG_CACHE_DIR"


def cache_dir() -> Path:
    """``$CEG_CACHE_DIR`` if set, else the platform's user cache (``~/.cache/crossearth-gate/weights`` on Linux)."""
    override = os.environ.get(CACHE_ENV)
    return Path(override) if override else Path(platformdirs.user_cache_dir("crossearth-gate")) / "weights"


def cached_file(backbone: str, source: str, version: str) -> Path:
    return cache_dir() / f"{backbone}--{source}-{version}.safetensors"
