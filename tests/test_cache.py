"""The user cache's folders, with and without $CEG_CACHE_DIR: the paths users' caches were filled under."""

from __future__ import annotations

from pathlib import Path

import pytest

from crossearth_gate.util.cache import CACHE_ENV, cache_dir
from crossearth_gate.weights.cache import cached_file


def test_without_the_variable_every_kind_is_a_folder_of_the_platforms_user_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # platformdirs' user cache on Linux
    root = tmp_path / "xdg" / "crossearth-gate"
    assert cache_dir("labels") == root / "labels"
    assert cached_file("vit_x", "src", "v1") == root / "weights" / "vit_x--src-v1.safetensors"


def test_the_variable_holds_the_labels_folder_and_is_the_weights_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    assert cache_dir("labels") == tmp_path / "cache" / "labels"
    assert cached_file("vit_x", "src", "v1") == tmp_path / "cache" / "vit_x--src-v1.safetensors"
