"""Lightning callback that decides WHEN the framework-free gate re-selects slots, and saves its artefacts."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import lightning as L
import torch

from ..config.schema import GateConfig
from ..gating import BudgetedSelector, Gate, GateSchedule, make_selector, measured_cost_model
from ..gating.fisher import PerSampleLoss
from ..gating.selection import as_count
from ..runs.plots import plot_gate_map
from ..util.atomic import atomic_write_json
from ..util.errors import UserError
from ..util.seeds import derive_seed
from .held_writes import HeldWrites
from .losses import fisher_loss
from .phases import PhaseClock, timed


def trainable_digest(model: torch.nn.Module) -> str:
    """sha256 of the head, every slot (active or not) and whatever else needs grad, in name order: ranks in
    sync hold them equal bit for bit (the frozen backbone is left out: it never moves, and it is large)."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad or not name.startswith("backbone."):
            digest.update(name.encode())
            digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def check_ranks_agree(active: list[str], model: torch.nn.Module) -> None:
    """Under DDP every rank must train the same slots with the same weights; a mismatch would silently
    desynchronise them."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    local = (active, trainable_digest(model))
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, local)
    if any(other[0] != active for other in gathered):
        raise RuntimeError(f"ranks selected different active sets: {[other[0] for other in gathered]}")
    if any(other[1] != local[1] for other in gathered):
        raise RuntimeError("ranks hold different trainable weights: their gradients were not all averaged")


COST_MODEL_FILE = "cost_model.json"


class FisherData(Protocol):
    """Where the gate's samples come from when not from the labelled source (training/adaptation.py)."""

    name: str
    model: torch.nn.Module  # what is scored: the segmentor, or a head-outputs view of it
    loss: PerSampleLoss

    def batches(self, num_samples: int, seed: int,
                device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class GateCallback(L.Callback):
    """Before the optimisation step ``s`` where the schedule is due, score all slots and keep the top-k
    (or, with a ``budget``, the best set within it: the cost model is measured when training starts)."""

    def __init__(self, config: GateConfig, task: L.LightningModule, *, seed: int, datamodule: Any = None,
                 run_dir: Path | None = None, fisher_data: FisherData | None = None, held: HeldWrites | None = None,
                 clock: PhaseClock | None = None):
        """``datamodule`` gives the labelled source samples (DG; None when ``fisher_data`` gives them); gates.json
        and gate_map.png go to ``run_dir`` (None: not written), aside while ``held``. ``fisher_data``: the
        samples to score on; None: those the trained task names when training starts (``setup``), the labelled
        source when it names none. ``clock``: fit's phases, calibration and selections timed as the gate's."""
        g = config
        chooser = make_selector(g.selector, seed, g.fisher_method)
        if g.budget.is_set:
            chooser = BudgetedSelector(chooser, g.budget)
        schedule = GateSchedule(every=g.every, warmup=g.warmup)
        self.gate = Gate(task.model.toolbox, chooser, as_count(g.k), schedule, g.num_samples)
        self.datamodule = datamodule
        self.seed = seed
        self.num_samples = g.num_samples
        self.run_dir = run_dir
        self.held = held  # a continuation writes its artefacts aside until its first checkpoint
        self.ever_active: set[str] = set()
        self.clock = clock
        if g.fisher_method == "vmap" and not task.model.head.supports_vmap:
            raise UserError("gate.fisher_method vmap cannot differentiate a head loss with Hungarian matching "
                            "(scipy): use loop")
        self._given = fisher_data is not None
        self._score_on(fisher_data, task)
        self.scored_on: list[str] = []  # per selection: which data scored it (gates.json "data")
        self.evaluated_step: int | None = None  # the step of the weights the test scores (gates.json)
        self._restoring_for_test = False

    def _score_on(self, fisher_data: FisherData | None, task: L.LightningModule) -> None:
        """What is scored and with which loss: ``fisher_data``'s, or (None) the segmentor's raw head outputs and
        the head's loss of one labelled source image."""
        self.fisher_data = fisher_data
        self.scored, self.loss = (fisher_data.model, fisher_data.loss) if fisher_data is not None \
            else fisher_loss(task.model)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Training starts: the task names its samples (DA: pseudo-labelled target images) unless given."""
        if stage == "fit" and not self._given:
            self._score_on(pl_module.gate_samples(), pl_module)

    def _batches(self, device: torch.device, rank: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Fresh samples for every selection, and different ones on every rank (scores are summed).

        Not a generator: the DA data reads the student's active set when this is called, before scoring
        switches every slot on. The samples are drawn only when the gate reads them (a selection is due).
        """
        seed = derive_seed(self.seed, "fisher_samples", index=len(self.gate.history), rank=rank)
        if self.fisher_data is not None:
            return self.fisher_data.batches(self.num_samples, seed, device)
        return self._source_batches(seed, device)

    def _source_batches(self, seed: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The labelled source samples, cropped from their own seeded stream and drawn in full before the
        first is yielded: the training crops after a selection are those of a run without the gate."""
        drawn: list[tuple[torch.Tensor, torch.Tensor]] = []
        count = 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            loader = self.datamodule.fisher_dataloader(self.num_samples, seed=seed)
            for batch in itertools.chain.from_iterable(itertools.repeat(loader)):  # more passes if the set is small
                drawn.append((batch["image"].to(device), batch["mask"].to(device)))
                count += len(batch["image"])
                if count >= self.num_samples:  # only what the score reads: the whole set cost seconds a selection
                    break
        yield from drawn

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with timed(self.clock, "gate"):
            self._calibrate(pl_module)

    def _calibrate(self, pl_module: L.LightningModule) -> None:
        """Measure (or read back from the run directory) the cost model a budgeted gate selects with."""
        selector = self.gate.selector
        if not isinstance(selector, BudgetedSelector):
            return
        batch = next(iter(self.datamodule.fisher_dataloader(self.datamodule.batch_size, seed=self.seed)))
        images, targets = batch["image"].to(pl_module.device), batch["mask"].to(pl_module.device)
        cache = self.run_dir / COST_MODEL_FILE if self.run_dir is not None else None
        model, loss = fisher_loss(pl_module.model)
        selector.cost = measured_cost_model(model, pl_module.model.toolbox, images, targets, loss, cache)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        with timed(self.clock, "gate"):
            self._maybe_select(trainer, pl_module)

    def _maybe_select(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        selection = self.gate.maybe_select(
            step, self.scored, self._batches(pl_module.device, trainer.global_rank), self.loss
        )
        if selection is not None:
            self.scored_on.append(self.fisher_data.name if self.fisher_data is not None else "source")
            check_ranks_agree(pl_module.model.toolbox.active_slots(), pl_module.model)
            pl_module.log("gate/selection_step", float(step), batch_size=1)
            if self.run_dir is not None and trainer.is_global_zero:
                self.write_artefacts()
        self.ever_active.update(pl_module.model.toolbox.active_slots())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        check_ranks_agree(pl_module.model.toolbox.active_slots(), pl_module.model)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A test that restored no checkpoint scores the weights in memory, of the last step trained."""
        if self.evaluated_step is None:
            self.evaluated_step = trainer.global_step

    def write_artefacts(self) -> None:
        """gates.json (every selection with its scores; the tested checkpoint's step) and gate_map.png."""
        assert self.run_dir is not None
        gates = self.gate.to_dict()
        for record, data in zip(gates["selections"], self.scored_on, strict=False):
            record["data"] = data
        if self.evaluated_step is not None:
            gates["evaluated_step"] = self.evaluated_step
        place = self.held.path if self.held is not None else Path
        atomic_write_json(place(self.run_dir / "gates.json"), gates)
        if gates["selections"]:
            plot_gate_map(gates, place(self.run_dir / "gate_map.png"))

    def state_dict(self) -> dict[str, Any]:
        return {"gate": self.gate.state_dict(), "ever_active": sorted(self.ever_active), "scored_on": self.scored_on}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        """Lightning calls this before ``load_state_dict``; a test restoring the best checkpoint takes its
        weights and active set, not its (shorter) selection history."""
        self._restoring_for_test = trainer.testing
        if trainer.testing:
            self.evaluated_step = int(checkpoint["global_step"])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._restoring_for_test:
            self._restoring_for_test = False
            return  # the task's on_load_checkpoint sets the checkpoint's active set
        self.gate.load_state_dict(state_dict["gate"])
        self.ever_active = set(state_dict.get("ever_active", []))
        self.scored_on = list(state_dict.get("scored_on", []))
