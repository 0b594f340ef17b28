"""From slot scores to an active set: normalise per type, resolve k, take the top k; the selectors.

Intra-type normalisation (S = Ŝ / Σ over the layers of the same type) makes the three module types
comparable before the top-k over all (type, layer) slots. Everything here is deterministic: ties
go to the canonical type order, then the lower layer, whatever the order of the input dicts.
"""

from __future__ import annotations

import math
import random
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

from torch import nn

from ..toolbox.slots import SLOT_TYPES, parse_slot
from ..util.errors import UserError
from .fisher import Batches, PerSampleLoss, Switchboard, check_method, slot_fisher, slot_gradnorm


@dataclass(frozen=True)
class Selection:
    """One re-selection: raw scores Ŝ, per-type normalised scores S, the chosen active set, and for a
    budgeted selection its cost record (budget.py)."""

    raw: dict[str, float]
    normalized: dict[str, float]
    active: list[str]
    budget: dict[str, Any] | None = None


def slot_order(name: str) -> tuple[int, int]:
    """Canonical sort key of a slot: type order (spatial, semantic, frequency), then layer."""
    slot_type, layer = parse_slot(name)
    return SLOT_TYPES.index(slot_type), layer


def canonical(names: Iterable[str]) -> list[str]:
    return sorted(names, key=slot_order)


def normalize_per_type(raw: dict[str, float]) -> dict[str, float]:
    """S = Ŝ / Σ over layers of the same type; a type whose total is 0 gets zeros (no NaN)."""
    totals = dict.fromkeys(SLOT_TYPES, 0.0)
    for name in canonical(raw):  # fixed summation order: same floats for any dict order
        totals[parse_slot(name)[0]] += raw[name]
    normalized = {}
    for name in canonical(raw):
        total = totals[parse_slot(name)[0]]
        normalized[name] = raw[name] / total if total > 0 else 0.0
    return normalized


def resolve_k(k: int | float, num_slots: int) -> int:
    """How many slots to activate: an int is a count, a float in (0, 1] a fraction (half rounds up)."""
    if isinstance(num_slots, bool) or not isinstance(num_slots, int) or num_slots < 1:
        raise UserError(f"there must be at least one slot to select from, got {num_slots!r}")
    if isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= num_slots:
        return k
    if isinstance(k, float) and 0 < k <= 1:
        return max(1, math.floor(k * num_slots + 0.5))
    raise UserError(f"k must be an integer in [1, {num_slots}] or a fraction in (0, 1], got {k!r}")


def as_count(k: int | float) -> int | float:
    """YAML gives floats: ``9.0`` is the count 9; ``0.25`` stays a fraction, and ``4.5`` stays a float that
    ``resolve_k`` refuses (never truncated to a count of 4)."""
    return int(k) if isinstance(k, float) and k > 1 and k.is_integer() else k


def _check_k(k: int, num_slots: int) -> None:
    if not 1 <= k <= num_slots:
        raise UserError(f"cannot select {k} of {num_slots} slots")


def top_k(scores: dict[str, float], k: int) -> list[str]:
    """The k best slots (higher score, then type order, then lower layer), in canonical order."""
    _check_k(k, len(scores))
    bad = [name for name, score in scores.items() if not math.isfinite(score)]
    if bad:
        raise UserError(f"non-finite slot scores for {canonical(bad)}: the loss diverged")
    best = sorted(scores, key=lambda name: (-scores[name], *slot_order(name)))[:k]
    return canonical(best)


class Selector(Protocol):
    """Scores the slots and picks ``k`` of them; ``index`` counts the selections made so far."""

    name: ClassVar[str]

    def select(
        self,
        model: nn.Module,
        switchboard: Switchboard,
        batches: Batches,
        per_sample_loss: PerSampleLoss,
        num_samples: int,
        k: int,
        index: int,
    ) -> Selection: ...


def _from_raw(raw: dict[str, float], k: int) -> Selection:
    normalized = normalize_per_type(raw)
    return Selection(raw, normalized, top_k(normalized, k))


@dataclass(frozen=True)
class FisherSelector:
    """The method: top-k of the per-type normalised empirical Fisher."""

    method: str = "loop"
    name: ClassVar[str] = "fisher"

    def __post_init__(self) -> None:
        check_method(self.method)

    def select(
        self,
        model: nn.Module,
        switchboard: Switchboard,
        batches: Batches,
        per_sample_loss: PerSampleLoss,
        num_samples: int,
        k: int,
        index: int,
    ) -> Selection:
        stats = slot_fisher(model, switchboard, batches, per_sample_loss, num_samples, self.method)
        return _from_raw(stats.raw, k)


@dataclass(frozen=True)
class GradNormSelector:
    """Ablation: the same pipeline with ‖mean gradient‖ in place of the Fisher."""

    name: ClassVar[str] = "gradnorm"

    def select(
        self,
        model: nn.Module,
        switchboard: Switchboard,
        batches: Batches,
        per_sample_loss: PerSampleLoss,
        num_samples: int,
        k: int,
        index: int,
    ) -> Selection:
        stats = slot_gradnorm(model, switchboard, batches, per_sample_loss, num_samples)
        return _from_raw(stats.raw, k)


@dataclass(frozen=True)
class RandomSelector:
    """Baseline: k slots drawn uniformly, seeded by (seed, index) only, so every rank and every rerun
    draws the same sets whatever the global RNG state. It scores nothing: ``raw`` and ``normalized``
    are empty dicts, and the batches are not read."""

    seed: int
    name: ClassVar[str] = "random"

    def select(
        self,
        model: nn.Module,
        switchboard: Switchboard,
        batches: Batches,
        per_sample_loss: PerSampleLoss,
        num_samples: int,
        k: int,
        index: int,
    ) -> Selection:
        names = list(switchboard.slot_names)
        _check_k(k, len(names))
        rng = random.Random(f"{self.seed}:{index}")
        return Selection({}, {}, canonical(rng.sample(names, k)))


SelectorName = Literal["fisher", "gradnorm", "random"]  # gate.selector
SELECTORS: tuple[SelectorName, ...] = typing.get_args(SelectorName)


def make_selector(name: str, seed: int, method: str = "loop") -> Selector:
    """The selector called ``name``; ``seed`` is used by ``random``, ``method`` by ``fisher``."""
    if name == "fisher":
        return FisherSelector(method)
    if name == "gradnorm":
        return GradNormSelector()
    if name == "random":
        return RandomSelector(seed)
    raise UserError(f"unknown selector {name!r}; choose one of {list(SELECTORS)}")
