"""Value checks for the config sections: each refusal is one line naming the key (``config gate.k: ...``).

The sections (``GateConfig``, ``ToolboxConfig``, ...) live beside the code they configure and call these
from ``__post_init__``, so a value is checked wherever a section is built: from YAML or in code.
"""

from __future__ import annotations

import math
import typing
from typing import Any

from .errors import UserError


def require(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise UserError(f"config {key}: {rule}, got {value!r}")


def at_least(value: float | None, low: float, key: str) -> None:
    """``value >= low`` and finite; ``None`` (the section's "derive it" default) passes."""
    if value is not None:
        require(math.isfinite(value) and value >= low, key, f"must be >= {low:g}", value)


def positive(value: float | None, key: str, unit: str = "") -> None:
    """``value > 0`` and finite; ``None`` passes."""
    if value is not None:
        require(math.isfinite(value) and value > 0, key, f"must be > 0{unit}", value)


def finite(value: float, key: str) -> None:
    require(math.isfinite(value), key, "must be finite", value)


def in_unit_interval(value: float, key: str, *, open_low: bool = False, open_high: bool = False) -> None:
    """``value`` in [0, 1] with either end optionally open, written as the rule says (``(0, 1]``)."""
    ok = (0 < value if open_low else 0 <= value) and (value < 1 if open_high else value <= 1)
    require(ok, key, f"must be in {'(' if open_low else '['}0, 1{')' if open_high else ']'}", value)


def one_of(value: Any, choices: Any, key: str) -> None:
    """``value`` is one of a ``Literal[...]`` type's values: the Literal is the one list of allowed values."""
    allowed = list(typing.get_args(choices))
    require(value in allowed, key, f"must be one of {allowed}", value)
