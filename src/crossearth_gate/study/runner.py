"""Run a study's cells one by one, each ``fit`` in a fresh subprocess, skipping finished cells.

A subprocess per cell frees all memory between cells and keeps one crashed cell from ending the
study. A killed cell resumes from its last checkpoint when started again (fit's own resume).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from ..util import console
from ..util.errors import UserError
from .records import is_finished, read_state, write_state
from .spec import Cell

LOG_FILE = "study.log"


def duration(seconds: float | None) -> str:
    """``3725`` → ``"1h02m"``; ``75`` → ``"1m15s"``."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def check_same_cell(cell: Cell, out: Path) -> None:
    """A run directory made with other arguments must not be resumed or reused as this cell's result."""
    recorded = read_state(cell.run_dir(out)).get("argv")
    if recorded is not None and recorded != cell.fit_args(out):
        raise UserError(f"{cell.run_dir(out)}: made with other settings than the study now gives {cell.key}; "
                        "delete it or use another --out")


def _last_error(log: Path) -> str | None:
    lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [None])[-1]


def run_cell(cell: Cell, out: Path) -> tuple[int, float]:
    """Run one cell to completion (or failure); output goes to the cell's study.log. Returns (exit code, s).

    The wall time of every attempt is added up, an interrupted one included.
    """
    run_dir = cell.run_dir(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    previous = read_state(run_dir).get("wall_s", 0.0)
    start = time.monotonic()
    code: int | None = None
    try:
        with open(run_dir / LOG_FILE, "a", encoding="utf-8") as log:
            code = subprocess.call([sys.executable, "-m", "crossearth_gate.cli", *cell.fit_args(out)],
                                   stdout=log, stderr=subprocess.STDOUT)
    finally:
        wall = time.monotonic() - start
        write_state(run_dir, {
            "argv": cell.fit_args(out), "wall_s": round(previous + wall, 1), "exit_code": code,
            "error": _last_error(run_dir / LOG_FILE) if code else None,
        })
    return code, wall


def _estimate(walls: list[float], finished_walls: list[float], remaining: int) -> float | None:
    """Remaining time from this session's cells, else from cells finished earlier."""
    sample = walls or finished_walls
    return statistics.fmean(sample) * remaining if sample else (0.0 if remaining == 0 else None)


def run_cells(cells: list[Cell], out: Path) -> None:
    """Run every unfinished cell, printing one progress line per cell."""
    for cell in cells:
        check_same_cell(cell, out)
    start = time.monotonic()
    walls: list[float] = []
    total = len(cells)
    for i, cell in enumerate(cells, 1):
        run_dir = cell.run_dir(out)
        if is_finished(run_dir):
            outcome = f"finished earlier ({duration(read_state(run_dir).get('wall_s'))})"
        else:
            code, wall = run_cell(cell, out)
            walls.append(wall)
            log = run_dir / LOG_FILE
            outcome = f"done in {duration(wall)}" if code == 0 else f"[red]FAILED[/] (exit {code}, see {log})"
        remaining = sum(not is_finished(c.run_dir(out)) for c in cells[i:])
        finished_walls = [w for c in cells if is_finished(c.run_dir(out))
                          if (w := read_state(c.run_dir(out)).get("wall_s")) is not None]
        eta = _estimate(walls, finished_walls, remaining)
        console.info(f"[{i}/{total}] {cell.key}: {outcome} · elapsed {duration(time.monotonic() - start)}"
                     f" · about {duration(eta)} left")
