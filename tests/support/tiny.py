"""The tiny settings of tests/configs/tiny.yaml as the CLI and the model builders take them."""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import yaml

from support.paths import TESTS_CONFIGS


@cache
def _settings() -> dict[str, Any]:
    return yaml.safe_load((TESTS_CONFIGS / "tiny.yaml").read_text())


def inline_yaml(value: Any) -> str:
    """``value`` as one line of YAML (flow style, keys in their order), the form overrides and flags take."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1 << 30).strip()
    text = text.removesuffix("...").strip()  # a plain scalar's document end marker
    assert yaml.safe_load(text) == value, f"{value!r} does not survive as {text!r}"
    return text


def override(key: str, value: Any) -> str:
    """``key=value``, the form ``fit`` parses after its config."""
    return f"{key}={inline_yaml(value)}"


def tiny_run(name: str) -> list[str]:
    """The overrides of one named run (``runs.<name>`` in tiny.yaml)."""
    return [override(key, value) for key, value in _settings()["runs"][name].items()]


def tiny_model(name: str) -> dict[str, Any]:
    """A model shape (``models.<name>``): keyword arguments for timm or a head; a fresh copy each call."""
    return copy.deepcopy(_settings()["models"][name])


def benchmark_flags() -> list[str]:
    """The flags of a tiny ``crossearth-gate benchmark`` run."""
    return [str(item) for flag, value in _settings()["benchmark_command"].items() for item in (flag, value)]


TINY = tiny_run("demo")
"""The demo run: the suite's default end-to-end fit (tiny ViT, Dubai tile 1 → tile 5)."""
