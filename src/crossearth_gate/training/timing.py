"""Step timing for metrics.json: studies compare methods by cost as well as by mIoU."""

from __future__ import annotations

import statistics
import time
from typing import Any

import lightning as L


class StepTimer(L.Callback):
    """Median wall time of one optimisation step (forward, backward, optimiser) in this process.

    The median leaves out the occasional step that also ran a gate selection or validation; after a
    resume it covers the steps run since the resume.
    """

    def __init__(self) -> None:
        self.durations: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.durations.append(time.perf_counter() - self._start)

    def summary(self) -> dict[str, Any]:
        step_s = round(statistics.median(self.durations), 4) if self.durations else None
        return {"step_s": step_s, "timed_steps": len(self.durations)}
