"""Where ``fit``'s wall time goes, phase by phase: printed at the end and kept in metrics.json, so a change
that is meant to make the demo faster can be compared with the version before it, phase against phase.

Phases: set-up (weight resolution, model, data, run folder, trainer), training steps, gate calibration
and selections, validation, test (without the samples), test samples (the prediction PNGs) and
artefacts (gates.json, the gate map and adaptation figures). Training steps are ``trainer.fit``'s time
less the validations and gate work inside it; the phases then add up to the wall time up to the moment
metrics.json is written (its own writing and the trainable weights' file come after).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import lightning as L

PHASES = ("set-up", "training steps", "gate", "validation", "test", "test samples", "artefacts")


class PhaseClock:
    """Seconds per phase since ``fit`` began; phases timed inside others are subtracted from them."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}")
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextmanager
    def phase(self, name: str, inner: tuple[str, ...] = ()) -> Iterator[None]:
        """Time ``name``; whatever ``inner`` phases grow by meanwhile is not counted twice."""
        before = sum(self.seconds.get(n, 0.0) for n in inner)
        start = time.perf_counter()
        try:
            yield
        finally:
            inside = sum(self.seconds.get(n, 0.0) for n in inner) - before
            self.add(name, time.perf_counter() - start - inside)

    def summary(self) -> dict[str, Any]:
        """{"phases_s": {phase: s} in PHASES order (those that ran), "wall_s": s since ``fit`` began}."""
        phases = {name: round(self.seconds[name], 3) for name in PHASES if name in self.seconds}
        return {"phases_s": phases, "wall_s": round(time.perf_counter() - self.start, 3)}


def timed(clock: PhaseClock | None, name: str) -> AbstractContextManager[None]:
    """``clock.phase(name)``, or nothing when there is no clock (a task or callback used outside ``fit``)."""
    return clock.phase(name) if clock is not None else nullcontext()


class ValidationTimer(L.Callback):
    """Adds each validation inside ``trainer.fit`` to the clock's validation phase."""

    def __init__(self, clock: PhaseClock):
        self.clock = clock
        self._start = 0.0

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.clock.add("validation", time.perf_counter() - self._start)

