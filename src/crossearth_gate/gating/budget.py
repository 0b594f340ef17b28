"""The compute-aware rule: the best-scoring active set of at most k slots that fits a compute budget.

Beside the paper's plain top-k (still the default), a budget bounds the predicted step time (a fraction
of the all-on step), the lowest block with an active slot, and/or the trainable slot parameters. The
search is exact, not greedy:

* Fix the lowest block j that may hold an active slot (every j the budget allows). Charging the blocks
  from j up is exact for sets whose lowest slot is at j and an over-estimate for the others, which are
  charged exactly at their own j; so the best over all j is the true optimum.
* Given j, a slot's cost depends on its type only (costs.py), so a set is priced by how many slots of
  each type it holds. For given counts the best set takes the best-ranked slots of each type in blocks
  ≥ j: same cost, no smaller score, no worse tie-break. Enumerating every j and every count vector
  therefore finds the optimum. For the last type only the largest count that fits matters (adding a
  slot never lowers the cost and never worsens the preference), which leaves L·(k+1)² candidates.

Scores are compared as correctly rounded sums (``math.fsum``), so the result does not depend on
summation order. Ties go to the set whose slots rank best in the plain top-k order (higher score, type
order, lower layer), compared slot by slot and filled up to k: without a binding budget this is exactly
``top_k``. Every rank holds the same scores and the same (broadcast) cost model, so all ranks agree.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from torch import nn

from ..toolbox.slots import parse_slot
from ..util.errors import UserError
from .costs import CostModel
from .fisher import Batches, PerSampleLoss, Switchboard
from .selection import Selection, Selector, slot_order, top_k


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Budget:
    """``gate.budget``: every field None means no budget (plain top-k)."""

    step_fraction: float | None = None  # predicted step time ≤ this fraction of the all-on step
    lowest_block: int | None = None  # no active slot below this block
    max_params: int | None = None  # trainable slot parameters

    def __post_init__(self) -> None:
        f = self.step_fraction
        if f is not None and (isinstance(f, bool) or not isinstance(f, int | float) or not 0 < f <= 1):
            raise UserError(f"gate.budget.step_fraction must be in (0, 1], got {f!r}")
        if self.lowest_block is not None and (not _is_int(self.lowest_block) or self.lowest_block < 0):
            raise UserError(f"gate.budget.lowest_block must be an integer >= 0, got {self.lowest_block!r}")
        if self.max_params is not None and (not _is_int(self.max_params) or self.max_params < 1):
            raise UserError(f"gate.budget.max_params must be an integer >= 1, got {self.max_params!r}")

    @property
    def is_set(self) -> bool:
        return any(v is not None for v in asdict(self).values())

    def admits(self, active: list[str], cost: CostModel) -> bool:
        """Whether a set fits: the one feasibility rule the search and the records use."""
        if self.lowest_block is not None and any(parse_slot(n)[1] < self.lowest_block for n in active):
            return False
        if self.max_params is not None and cost.params(active) > self.max_params:
            return False
        return self.step_fraction is None or cost.step_s(active) <= self.step_fraction * cost.all_on_s


def budgeted_top_k(scores: dict[str, float], k: int, cost: CostModel, budget: Budget) -> list[str]:
    """The best non-empty set of at most ``k`` slots within ``budget``, in canonical order (see module doc)."""
    plain = top_k(scores, k)  # also validates k and the scores
    if not budget.is_set:
        return plain
    ranked = sorted(scores, key=lambda name: (-scores[name], *slot_order(name)))
    rank = {name: i for i, name in enumerate(ranked)}
    types = sorted({parse_slot(n)[0] for n in scores}, key=lambda t: slot_order(f"{t}.0"))
    _check_priced(scores, cost)
    best: tuple[Any, ...] | None = None
    chosen: list[str] = []
    for j in range(budget.lowest_block or 0, cost.depth):
        *pools, last = [[n for n in ranked if parse_slot(n)[0] == t and parse_slot(n)[1] >= j] for t in types]
        for counts in itertools.product(*(range(min(k, len(p)) + 1) for p in pools)):
            base = [n for pool, c in zip(pools, counts, strict=True) for n in pool[:c]]
            if len(base) > k:
                continue
            candidate = _fill(base, last[: k - len(base)], lambda s: budget.admits(s, cost))
            key = _preference(candidate, scores, rank, k) if candidate else None
            if key is not None and (best is None or key < best):
                best, chosen = key, candidate
    if best is None:
        raise UserError(_infeasible(scores, cost, budget))
    return sorted(chosen, key=slot_order)


def _fill(base: list[str], pool: list[str], fits: Callable[[list[str]], bool]) -> list[str]:
    """``base`` plus the longest prefix of ``pool`` that fits ([] if even ``base`` does not).

    Adding a slot never lowers the cost (costs are non-negative) nor worsens the preference (scores are
    non-negative; a slot fills a place that ranked last), so the longest fitting prefix is the best.
    """
    if not fits(base):
        return []
    c = 0
    while c < len(pool) and fits(base + pool[: c + 1]):
        c += 1
    return base + pool[:c]


def _preference(active: list[str], scores: dict[str, float], rank: dict[str, int], k: int) -> tuple[Any, ...]:
    """Smaller is better: higher total score, then best-ranked slots first, a missing slot ranking last."""
    ranks = sorted(rank[n] for n in active)
    return (-math.fsum(scores[n] for n in active), *ranks, *[math.inf] * (k - len(ranks)))


def _check_priced(scores: dict[str, float], cost: CostModel) -> None:
    unpriced = sorted(set(scores) - set(cost.slot_names()), key=slot_order)
    if unpriced:
        raise ValueError(f"the cost model does not price slots {unpriced}")


def _infeasible(scores: dict[str, float], cost: CostModel, budget: Budget) -> str:
    """One line: the budget, and what the cheapest single slot it allows would need."""
    lowest = budget.lowest_block or 0
    allowed = [n for n in scores if parse_slot(n)[1] >= lowest]
    if not allowed:
        return f"gate.budget.lowest_block={lowest} leaves no slot: the model has blocks 0..{cost.depth - 1}"
    fraction = min(cost.step_fraction([n]) for n in allowed)
    params = min(cost.params([n]) for n in allowed)
    return (
        f"gate.budget {_describe(budget)} admits no slot: the cheapest single slot needs step_fraction "
        f"{fraction:.3f} and {params:,} parameters (a step with no slot at all: {cost.step_fraction([]):.3f})"
    )


def _describe(budget: Budget) -> str:
    return ", ".join(f"{key}={value}" for key, value in asdict(budget).items() if value is not None)


def budget_record(active: list[str], scores: dict[str, float], k: int, cost: CostModel,
                  budget: Budget) -> dict[str, Any]:
    """What gates.json keeps of a budgeted selection: the budget, the chosen set's cost, the score given up."""
    plain = top_k(scores, k)
    score = math.fsum(scores[n] for n in active)
    plain_score = math.fsum(scores[n] for n in plain)
    layers = [parse_slot(n)[1] for n in active]
    return {
        "limits": asdict(budget),
        "step_fraction": cost.step_fraction(active),
        "params": cost.params(active),
        "lowest_block": min(layers) if layers else None,
        "score": score,
        "top_k": plain,
        "top_k_step_fraction": cost.step_fraction(plain),
        "top_k_params": cost.params(plain),
        "top_k_score": plain_score,
        "score_given_up": plain_score - score,
    }


@dataclass
class BudgetedSelector:
    """Wraps a scoring selector: its per-type normalised scores, then the budgeted search instead of top-k.

    ``cost`` is measured at start-up (calibration.py) and must be set before the first selection.
    """

    scorer: Selector
    budget: Budget
    cost: CostModel | None = field(default=None)
    scoring: ClassVar[tuple[str, ...]] = ("fisher", "gradnorm")

    def __post_init__(self) -> None:
        if self.scorer.name not in self.scoring:
            raise UserError(f"gate.budget needs a scoring selector ({' or '.join(self.scoring)}), "
                            f"not {self.scorer.name!r}")

    @property
    def name(self) -> str:
        return self.scorer.name

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
        if self.cost is None:
            raise RuntimeError("the cost model must be calibrated before a budgeted selection")
        scored = self.scorer.select(model, switchboard, batches, per_sample_loss, num_samples, k, index)
        active = budgeted_top_k(scored.normalized, k, self.cost, self.budget)
        record = budget_record(active, scored.normalized, k, self.cost, self.budget)
        return Selection(scored.raw, scored.normalized, active, record)
