"""Lightning callback that decides WHEN the framework-free gate re-selects slots, and saves its artefacts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ..atomic import atomic_write_json
from ..gating import Budget, BudgetedSelector, Gate, GateSchedule, make_selector, measured_cost_model
from ..plots import plot_gate_map
from .losses import per_sample_cross_entropy


def check_ranks_agree(active: list[str]) -> None:
    """Under DDP every rank must train the same slots; a mismatch would silently desynchronise them."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, active)
    if any(other != active for other in gathered):
        raise RuntimeError(f"ranks selected different active sets: {gathered}")


COST_MODEL_FILE = "cost_model.json"


class GateCallback(L.Callback):
    """Before the optimisation step ``s`` where the schedule is due, score all slots and keep the top-k
    (or, with a ``budget``, the best set within it: the cost model is measured when training starts)."""

    def __init__(self, task: L.LightningModule, datamodule: Any, selector: str, k: float, every: int,
                 warmup: int, num_samples: int, seed: int, run_dir: Path | None, fisher_method: str = "loop",
                 budget: Budget | None = None):
        count = int(k) if k > 1 else k  # YAML gives floats: 9.0 means a count of 9, 0.25 a fraction
        chooser = make_selector(selector, seed, fisher_method)
        if budget is not None and budget.is_set:
            chooser = BudgetedSelector(chooser, budget)
        self.gate = Gate(task.model.toolbox, chooser, count, GateSchedule(every=every, warmup=warmup), num_samples)
        self.datamodule = datamodule
        self.seed = seed
        self.num_samples = num_samples
        self.run_dir = run_dir
        self.ever_active: set[str] = set()

    def _batches(self, device: torch.device, rank: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Fresh samples for every selection, and different ones on every rank (scores are summed)."""
        seed = self.seed + 7919 * len(self.gate.history) + 104729 * rank
        for batch in self.datamodule.fisher_dataloader(self.num_samples, seed=seed):
            yield batch["image"].to(device), batch["mask"].to(device)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Measure (or read back from the run directory) the cost model a budgeted gate selects with."""
        selector = self.gate.selector
        if not isinstance(selector, BudgetedSelector):
            return
        batch = next(iter(self.datamodule.fisher_dataloader(self.datamodule.batch_size, seed=self.seed)))
        images, targets = batch["image"].to(pl_module.device), batch["mask"].to(pl_module.device)
        cache = self.run_dir / COST_MODEL_FILE if self.run_dir is not None else None
        model = pl_module.model
        selector.cost = measured_cost_model(model, model.toolbox, images, targets, per_sample_cross_entropy, cache)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        step = trainer.global_step
        selection = self.gate.maybe_select(
            step, pl_module.model, self._batches(pl_module.device, trainer.global_rank), per_sample_cross_entropy
        )
        if selection is not None:
            check_ranks_agree(pl_module.model.toolbox.active_slots())
            pl_module.log("gate/selection_step", float(step), batch_size=1)
            if self.run_dir is not None and trainer.is_global_zero:
                self.write_artefacts()
        self.ever_active.update(pl_module.model.toolbox.active_slots())

    def write_artefacts(self) -> None:
        """gates.json (every selection with its scores) and gate_map.png, written atomically."""
        assert self.run_dir is not None
        gates = self.gate.to_dict()
        atomic_write_json(self.run_dir / "gates.json", gates)
        if gates["selections"]:
            plot_gate_map(gates, self.run_dir / "gate_map.png")

    def state_dict(self) -> dict[str, Any]:
        return {"gate": self.gate.state_dict(), "ever_active": sorted(self.ever_active)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.gate.load_state_dict(state_dict["gate"])
        self.ever_active = set(state_dict.get("ever_active", []))
