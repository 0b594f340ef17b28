"""One results.json record per cell, read from its run directory (artefacts only, never training code).

Beside fit's artefacts the runner keeps ``study_cell.json`` in each run directory: the arguments the
cell was started with (so a changed study cannot silently reuse a stale run), its accumulated wall
time over all attempts, and the exit code and error line of the last attempt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..runs.report import SOURCE_DOMAIN, load_run
from ..util.atomic import atomic_write_json
from ..util.errors import UserError
from .spec import Cell

CELL_FILE = "study_cell.json"
DONE, FAILED, MISSING = "done", "failed", "missing"


def is_finished(run_dir: Path) -> bool:
    """fit writes metrics.json last and atomically: its presence means the cell finished."""
    return (run_dir / "metrics.json").is_file()


def read_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CELL_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err.msg}); delete it to restart this cell") from err


def write_state(run_dir: Path, state: dict[str, Any]) -> None:
    atomic_write_json(run_dir / CELL_FILE, state)


def target_mean(domains: dict[str, dict[str, Any]]) -> float | None:
    """Mean mIoU over the target domains (not held-out source); None if any target has no mIoU."""
    values = [d.get("mIoU") for name, d in domains.items() if name != SOURCE_DOMAIN]
    if not values or not all(isinstance(v, int | float) for v in values):
        return None
    return round(sum(values) / len(values), 4)


def step_cost(timing: dict[str, Any], phases_s: dict[str, float]) -> float | None:
    """The median step plus the Fisher selections spread over the timed steps: what one step of a method costs.

    Both come from the same attempt of the cell (a resumed cell times only the steps after its resume).
    """
    step, steps = timing.get("step_s"), timing.get("timed_steps")
    if not isinstance(step, int | float) or not isinstance(steps, int) or steps < 1:
        return None
    return round(step + phases_s.get("gate", 0.0) / steps, 5)


def cell_record(cell: Cell, out: Path) -> dict[str, Any]:
    """The cell's results, or its status ("failed" / "missing") with no numbers at all."""
    run_dir = cell.run_dir(out)
    state = read_state(run_dir)
    record: dict[str, Any] = {
        "protocol": cell.protocol, "config": cell.config, "seed": cell.seed, "status": MISSING,
        "run_dir": str(run_dir), "domains": {}, "target_mean_mIoU": None, "trainable_params": None,
        "step_s": None, "step_cost_s": None, "wall_s": state.get("wall_s"), "selector": None, "k": None,
        "command": cell.command(out),
    }
    if not is_finished(run_dir):
        if state.get("exit_code"):
            record.update(status=FAILED, error=state.get("error"))
        return record
    try:
        metrics = load_run(run_dir).metrics
    except UserError as err:
        return {**record, "status": FAILED, "error": str(err)}
    domains = {name: {k: d.get(k) for k in ("mIoU", "mF1", "OA")} for name, d in metrics["domains"].items()}
    run = metrics.get("run", {})
    timing = metrics.get("timing", {})
    record.update(
        status=DONE, domains=domains, target_mean_mIoU=target_mean(domains),
        trainable_params=metrics.get("params", {}).get("trainable"), step_s=timing.get("step_s"),
        step_cost_s=step_cost(timing, metrics.get("phases", {}).get("phases_s", {})),
        selector=run.get("selector"), k=run.get("k"),
    )
    return record
