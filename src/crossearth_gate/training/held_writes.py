"""A continued run's folder keeps describing the state it had until its first new checkpoint is committed.

When ``fit`` continues a run (a resume, or a finished run given a larger ``train.max_steps``), the files
that describe the training (config.yaml, gates.json, gate_map.png, logs/metrics.csv, checkpoints/best.ckpt)
are written under an aside name (``.<name>.held``) and swapped in right after ``last.ckpt``. A failure
before that (a full disk while writing the checkpoint) discards them: config, histories, checkpoints and
the earlier finish's metrics.json and trainable.safetensors still agree, and the same command run again
continues from the same checkpoint as if nothing had happened.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)

HELD_SUFFIX = ".held"
FINISHED = ("metrics.json", "trainable.safetensors")
"""What a finished run holds beyond its checkpoint: once a continuation commits a step past it, they no
longer describe the folder (and a metrics.json left beside a later last.ckpt would be read as its result)."""


def _aside(path: Path) -> Path:
    return path.with_name(f".{path.name}{HELD_SUFFIX}")


class HeldWrites:
    """Where the files describing the run are written: their own names, or aside while ``held``."""

    def __init__(self, run_dir: Path, held: bool):
        self.run_dir = Path(run_dir)
        self.held = held
        self._aside: dict[Path, Path] = {}
        if os.environ.get("LOCAL_RANK", "0") == "0":  # DDP ranks started later must not clear rank 0's
            self._clear_stale()

    def _clear_stale(self) -> None:
        """Aside files of a continuation that was killed before its first checkpoint describe nothing."""
        for stale in self.run_dir.rglob(f".*{HELD_SUFFIX}"):
            stale.unlink()

    def path(self, final: str | Path) -> Path:
        """Where to write ``final`` now: itself, or (while held) its aside name, swapped in by ``commit``."""
        final = Path(final)
        if not self.held:
            return final
        self._aside[final] = _aside(final)
        return self._aside[final]

    def commit(self, make_checkpoint_visible: Callable[[], None]) -> None:
        """The new checkpoint is on disk: retire the earlier finish, show the checkpoint, swap in the rest.

        Renames only, so nothing here needs disk space; a kill in between leaves a folder a rerun continues.
        """
        if self.held:
            for name in FINISHED:
                (self.run_dir / name).unlink(missing_ok=True)
        make_checkpoint_visible()
        if self.held:
            for final, aside in self._aside.items():
                if aside.exists():
                    os.replace(aside, final)
            self._aside.clear()
            self.held = False

    def discard(self) -> None:
        """After a failure: the aside files go, the folder keeps the state it had."""
        for aside in self._aside.values():
            aside.unlink(missing_ok=True)
        self._aside.clear()


class HeldModelCheckpoint(ModelCheckpoint):
    """The best checkpoint, written aside while a continuation is held (its path stays the final name)."""

    def __init__(self, held: HeldWrites, **kwargs: Any):
        super().__init__(**kwargs)
        self.held = held

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, str(self.held.path(filepath)))
