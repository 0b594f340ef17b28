"""The user cache of converted weights: one timm-layout safetensors file per (backbone, source)."""

from __future__ import annotations

from pathlib import Path

from crossearth_gate.util.cache import cache_dir


def cached_file(backbone: str, source: str, version: str) -> Path:
    """``$CEG_CACHE_DIR`` itself if set, else ``~/.cache/crossearth-gate/weights`` (util/cache.py)."""
    return cache_dir("weights", env_is_the_folder=True) / f"{backbone}--{source}-{version}.safetensors"
