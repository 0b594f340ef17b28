"""What an exact resume needs beyond Lightning's own checkpoint: the random streams of every rank, and a
``last.ckpt`` written on schedule that never runs ahead of the logged rows.

Model, optimiser, scheduler, loop counters and callbacks (the gate) are Lightning's checkpoint; the
data position is the resumable loader's (data/resumable.py).
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint

from .held_writes import HeldWrites

log = logging.getLogger(__name__)


def _capture() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def _restore(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(tuple(item if not isinstance(item, list) else tuple(item) for item in state["python"]))


def gather_ranks(local: Any) -> list[Any]:
    """Every rank's ``local`` in rank order (called on every rank, as checkpoint hooks are); [local] alone."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        ranks: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(ranks, local)
        return ranks
    return [local]


class RandomStates(L.Callback):
    """Saves torch (CPU and CUDA), numpy and python RNG states of every rank; a resumed run puts them back
    when training starts, after everything the start-up itself draws (model init, data set-up)."""

    def __init__(self) -> None:
        self._pending: list[dict[str, Any]] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"ranks": gather_ranks(_capture())}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = list(state_dict["ranks"])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ranks, self._pending = self._pending, None
        if ranks is None:
            return
        if len(ranks) != trainer.world_size:
            log.warning("the checkpoint holds random states of %d ranks, this run has %d: the rest of the run "
                        "is not the one an uninterrupted run would have trained", len(ranks), trainer.world_size)
            return
        _restore(ranks[trainer.global_rank])


class LastCheckpoint(Checkpoint):
    """``last.ckpt`` every ``every`` steps whatever the validation score, and at the end of training.

    With validation it is saved when validation ends (after the best checkpoint, so it records it);
    without, after the step, then made visible only once the step's logged rows are on disk (the
    rows are logged after ``on_train_batch_end``). A kill in between leaves the previous one. A held
    continuation's other files are swapped in with it (held_writes.py).
    """

    def __init__(self, path: Path, every: int, after_validation: bool, held: HeldWrites):
        self.path = Path(path)
        self.held = held
        self.pending = self.path.with_name(f".{self.path.name}.pending")
        self.every = every
        self.after_validation = after_validation
        self._saved_step: int | None = None

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.pending)
        self._saved_step = trainer.global_step

    def _commit(self, trainer: L.Trainer) -> None:
        if trainer.is_global_zero and self.pending.is_file():
            for logger in trainer.loggers:
                logger.save()
            self.held.commit(lambda: os.replace(self.pending, self.path))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._saved_step = trainer.global_step if trainer.global_step > 0 else None
        if trainer.is_global_zero and self.pending.is_file():
            self.pending.unlink()  # from a run killed before it could be committed

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._commit(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self.after_validation and trainer.global_step % self.every == 0:
            self._save(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.after_validation and not trainer.sanity_checking:
            self._save(trainer)
            self._commit(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._saved_step:
            self._save(trainer)
        self._commit(trainer)
