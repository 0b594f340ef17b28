"""What an active set costs per training step: the additive model the compute-aware gate budgets with.

Blocks below the lowest active slot run without autograd, so activating a slot in block j makes the
forward keep activations and the backward run through every block from the head down to j. A step
therefore costs

    step(S) = fixed + Σ_{i ≥ lowest(S)} block_s[i] + Σ_{slots in S} type_s[type of slot]

``fixed`` is what every set pays (frozen forward, head, loss, the head's optimiser step). The blocks
of a ViT are identical, so a slot's own cost (its forward, backward and optimiser step) and its
parameter count depend on its type only; the budgeted search relies on that to be exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ..toolbox.slots import parse_slot, slot_name


@dataclass(frozen=True)
class CostModel:
    """Seconds per training step of any active set, and its trainable slot parameters."""

    fixed_s: float
    block_s: tuple[float, ...]
    type_s: dict[str, float]
    type_params: dict[str, int]

    def __post_init__(self) -> None:
        costs = [self.fixed_s, *self.block_s, *self.type_s.values()]
        if any(not math.isfinite(c) or c < 0 for c in costs) or any(p < 0 for p in self.type_params.values()):
            raise ValueError(f"costs must be finite and non-negative: {self}")
        if set(self.type_s) != set(self.type_params):
            raise ValueError("type_s and type_params must name the same slot types")
        if self.all_on_s <= 0:
            raise ValueError("the all-on step must cost something: it is the unit of step fractions")

    @property
    def depth(self) -> int:
        return len(self.block_s)

    def slot_names(self) -> list[str]:
        """Every slot the model prices (all types, all blocks)."""
        return [slot_name(t, i) for t in self.type_s for i in range(self.depth)]

    def step_s(self, active: Iterable[str]) -> float:
        """Predicted step time; one correctly rounded sum, so it never decreases when a slot is added."""
        slots = [parse_slot(name) for name in active]
        if not slots:
            return self.fixed_s
        lowest = min(layer for _, layer in slots)
        return math.fsum([self.fixed_s, *self.block_s[lowest:], *(self.type_s[t] for t, _ in slots)])

    @cached_property
    def all_on_s(self) -> float:
        """The predicted all-on step: the unit of ``step_fraction``."""
        return self.step_s(self.slot_names())

    def step_fraction(self, active: Iterable[str]) -> float:
        """Predicted step time as a fraction of the all-on step (the budget's unit)."""
        return self.step_s(active) / self.all_on_s

    def params(self, active: Iterable[str]) -> int:
        return sum(self.type_params[parse_slot(name)[0]] for name in active)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fixed_s": self.fixed_s,
            "block_s": list(self.block_s),
            "type_s": dict(self.type_s),
            "type_params": dict(self.type_params),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CostModel:
        return cls(
            float(d["fixed_s"]),
            tuple(float(b) for b in d["block_s"]),
            {str(t): float(c) for t, c in d["type_s"].items()},
            {str(t): int(p) for t, p in d["type_params"].items()},
        )
