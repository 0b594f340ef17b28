"""Terminal output with rich: run summaries as tables, loud warnings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

_console = Console(stderr=False)
_errors = Console(stderr=True)


def info(message: str) -> None:
    _console.print(message)


def warn(message: str) -> None:
    _errors.print(f"[bold yellow]WARNING[/]: {message}")


def domain_table(metrics: dict[str, Any]) -> Table:
    """Per-domain mIoU / mF1 / OA, source held-out first, then every target."""
    table = Table(title=f"{metrics['run']['name']} ({metrics['run']['mode']})")
    for column in ("domain", "mIoU", "mF1", "OA"):
        table.add_column(column, justify="left" if column == "domain" else "right")
    for name, result in metrics["domains"].items():
        table.add_row(name, *(f"{result[k]:.2f}" for k in ("mIoU", "mF1", "OA")))
    return table


def phase_lines(record: dict[str, Any]) -> list[str]:
    """One line per phase of ``fit`` with its share of the wall time, then the wall time."""
    wall = record["wall_s"]
    lines = [f"{name:<15} {seconds:8.1f} s  {100 * seconds / wall if wall else 0:5.1f} %"
             for name, seconds in record["phases_s"].items()]
    return [*lines, f"{'wall time':<15} {wall:8.1f} s"]


def print_run_summary(metrics: dict[str, Any], run_dir: Path) -> None:
    _console.print(domain_table(metrics))
    weights = metrics.get("backbone", {}).get("weights")
    if isinstance(weights, dict):
        sha = f", sha256 {weights['sha256'][:12]}…" if weights.get("sha256") else ""
        _console.print(f"backbone weights: {weights['description']} (source: {weights['source']}{sha})",
                       markup=False)
    params = metrics["params"]
    _console.print(
        f"trainable parameters: {params['trainable']:,} of {params['total']:,} "
        f"({100 * params['trainable'] / params['total']:.2f} %)"
    )
    if metrics["run"].get("selector"):
        active = metrics["run"]["active"]
        _console.print(f"final active set ({len(active)} slots): {', '.join(active)}")
    if "phases" in metrics:  # fit's wall time by phase (training/phases.py)
        for line in phase_lines(metrics["phases"]):
            _console.print(line, markup=False)
    _console.print(f"artefacts in {run_dir}")
