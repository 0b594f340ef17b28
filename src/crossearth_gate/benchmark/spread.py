"""Figures measured once per round, summarised as median and min–max over rounds; a wide spread is flagged."""

from __future__ import annotations

import statistics
from typing import Any

SPREAD_LIMIT = 0.05  # ± around the median; wider: the machine drifted too much for the ratio to be trusted


def spread(values: list[float]) -> dict[str, Any]:
    """Median, min, max and half-width ((max − min) / 2) of one figure over the rounds, and the rounds."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "half_width": (max(values) - min(values)) / 2, "rounds": list(values)}


def spreads(per_round: list[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """{name: spread} over rounds of {name: value} records (every round has the same names)."""
    return {name: spread([r[name] for r in per_round]) for name in per_round[0]}


def wide(ratio_spreads: dict[str, dict[str, Any]], limit: float = SPREAD_LIMIT) -> list[str]:
    return [name for name, s in ratio_spreads.items() if s["half_width"] > limit]


def warning_line(names: list[str], rounds: int, limit: float = SPREAD_LIMIT) -> str | None:
    """One line naming every ratio whose spread is wider than ±limit; None when all are tight."""
    if not names:
        return None
    return (f"WARNING: spread wider than ±{limit} over {rounds} rounds for {', '.join(names)}: "
            "the machine's speed drifted; rerun on a quieter machine")
