"""The run's ``logs/metrics.csv``: kept across a resume, trimmed to the checkpoint, rewritten atomically.

Lightning's CSV logger deletes an existing metrics.csv when it starts and rewrites the file in place
when a new column appears; a resumed run would lose its earlier rows and a kill mid-rewrite could
lose all of them.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from ..util.atomic import atomic_write_text
from .held_writes import HeldWrites


class _AppendingWriter(ExperimentWriter):
    """Holds every row of the file (earlier ones read back, steps >= ``keep_below`` dropped)."""

    def __init__(self, log_dir: str, keep_below: int | None, held: HeldWrites | None):
        self._rows: list[dict[str, Any]] = []
        self._held = held
        super().__init__(log_dir)
        path = Path(self.metrics_file_path)
        if keep_below is not None and path.is_file():
            with path.open(newline="", encoding="utf-8") as f:
                self._rows = [row for row in csv.DictReader(f) if int(row["step"]) < keep_below]

    def _check_log_dir_exists(self) -> None:
        """Never delete: whether the folder may be reused was decided before training (run_dir.py)."""

    def save(self) -> None:
        if not self.metrics:
            return
        self._rows += self.metrics
        self.metrics = []
        keys = sorted(set().union(*self._rows))  # Lightning's column order: sorted names
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=keys, lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(self._rows)
        path = self._held.path(self.metrics_file_path) if self._held is not None else self.metrics_file_path
        atomic_write_text(path, text.getvalue())


class RunCSVLogger(CSVLogger):
    """``CSVLogger(save_dir=run_dir, name="logs", version="")`` whose file survives a resume.

    ``keep_below``: the first step of a resumed run (rows from that step on are replayed, so dropped);
    None for a fresh run. ``held``: where a continuation writes the file until its first checkpoint.
    """

    def __init__(self, run_dir: Path, keep_below: int | None, held: HeldWrites | None = None):
        super().__init__(save_dir=str(run_dir), name="logs", version="")
        self._keep_below = keep_below
        self._held = held

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(self.log_dir, self._keep_below, self._held)
        return self._experiment
