"""The gate: WHEN to re-select (schedule), doing it (selector + switchboard), and what happened (history).

Framework-free: a training loop (or a Lightning callback) calls ``maybe_select`` once per
optimisation step; the gate decides whether a selection is due. Its ``state_dict`` goes into the
checkpoint so a resumed run continues with the same active set and history; ``to_dict`` is the
gates.json format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..util.errors import UserError
from .fisher import Batches, PerSampleLoss, Switchboard
from .selection import Selection, Selector, resolve_k


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class GateSchedule:
    """Select first at optimisation step ``warmup``, then every ``every`` steps."""

    every: int
    warmup: int = 0

    def __post_init__(self) -> None:
        if not _is_int(self.every) or self.every < 1:
            raise UserError(f"gate 'every' must be an integer >= 1, got {self.every!r}")
        if not _is_int(self.warmup) or self.warmup < 0:
            raise UserError(f"gate 'warmup' must be an integer >= 0, got {self.warmup!r}")

    def is_due(self, step: int) -> bool:
        return step >= self.warmup and (step - self.warmup) % self.every == 0


@dataclass(frozen=True)
class Record:
    """A selection and the optimisation step it was made at."""

    step: int
    selection: Selection

    def to_dict(self) -> dict[str, Any]:
        s = self.selection
        record = {
            "step": self.step,
            "raw": {name: float(v) for name, v in s.raw.items()},
            "normalized": {name: float(v) for name, v in s.normalized.items()},
            "active": list(s.active),
        }
        return record if s.budget is None else {**record, "budget": s.budget}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        selection = Selection(dict(d["raw"]), dict(d["normalized"]), list(d["active"]), d.get("budget"))
        return cls(int(d["step"]), selection)


class Gate:
    """Re-selects the active set of ``switchboard`` on schedule and keeps the history."""

    def __init__(
        self,
        switchboard: Switchboard,
        selector: Selector,
        k: int | float,
        schedule: GateSchedule,
        num_samples: int,
    ):
        if not _is_int(num_samples) or num_samples < 1:
            raise UserError(f"the number of Fisher samples must be an integer >= 1, got {num_samples!r}")
        self.switchboard = switchboard
        self.selector = selector
        self.k = resolve_k(k, len(switchboard.slot_names))
        self.schedule = schedule
        self.num_samples = num_samples
        self.history: list[Record] = []

    def maybe_select(
        self, step: int, model: nn.Module, batches: Batches, per_sample_loss: PerSampleLoss
    ) -> Selection | None:
        """Select and apply a new active set if one is due at ``step`` (batches are read only then).

        A step at or before the last selection's step never selects again (e.g. just after resume).
        """
        if not self.schedule.is_due(step) or (self.history and self.history[-1].step >= step):
            return None
        selection = self.selector.select(
            model, self.switchboard, batches, per_sample_loss, self.num_samples, self.k, len(self.history)
        )
        self.switchboard.set_active(selection.active)
        self.history.append(Record(step, selection))
        return selection

    def to_dict(self) -> dict[str, Any]:
        """The gates.json content."""
        selections = [record.to_dict() for record in self.history]
        return {"k": self.k, "selector": self.selector.name, "selections": selections}

    def state_dict(self) -> dict[str, Any]:
        return {**self.to_dict(), "active": list(self.switchboard.active_slots())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore history and active set; the checkpoint must come from the same selector and k."""
        try:
            selector, k, active = state["selector"], state["k"], list(state["active"])
            history = [Record.from_dict(d) for d in state["selections"]]
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"the gate state in the checkpoint is malformed: {err!r}") from err
        if selector != self.selector.name or k != self.k:
            raise UserError(
                f"the checkpoint's gate used selector {selector!r} with k={k}; "
                f"this run uses {self.selector.name!r} with k={self.k}"
            )
        unknown = sorted(set(active) - set(self.switchboard.slot_names))
        if unknown:
            raise UserError(f"the checkpoint activates slots this model does not have: {unknown}")
        self.switchboard.set_active(active)
        self.history = history
