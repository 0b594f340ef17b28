"""``crossearth-gate study STUDY.yaml --out DIR``: run (or list, or re-aggregate) a study, then report it."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from rich.markup import escape

from ..util import console
from ..util.atomic import atomic_write_json, atomic_write_text
from ..util.errors import UserError
from .aggregate import aggregate
from .figures import plot_claims, write_figures
from .markdown import study_markdown
from .records import cell_record, is_finished
from .runner import run_cells
from .spec import Cell, Study, load_study


def write_results(study: Study, cells: list[Cell], out: Path, command: str) -> dict[str, Any]:
    """results.json (one record per cell plus the summary), the figures and study.md; returns the summary."""
    records = [cell_record(cell, out) for cell in cells]
    summary = aggregate(records, study)
    atomic_write_json(out / "results.json", {"study": study.name, "command": command, "cells": records,
                                             "summary": summary})
    costs, figures = write_figures(summary, records, out)
    claims_figure = plot_claims(summary["claims"], out / "figures" / "claims.png")
    atomic_write_text(out / "study.md", study_markdown(study, summary, costs, figures, command, out, claims_figure))
    return summary


def _chosen(option: str, names: list[str] | None, known: list[str]) -> list[str]:
    """The names an option restricts the run to (all when not given); unknown names are an error."""
    unknown = sorted(set(names or []) - set(known))
    if unknown:
        raise UserError(f"{option}: {', '.join(unknown)} not in the study (it has {', '.join(known)})")
    return names or known


def study_cli(args: argparse.Namespace) -> None:
    if args.max_cells is not None and args.max_cells < 1:
        raise UserError(f"--max-cells: expected a count >= 1, got {args.max_cells}")
    study = load_study(args.study)
    out: Path = args.out
    cells = study.cells()
    if args.dry_run:
        for cell in cells:  # plain print: commands must stay one line each, ready to copy
            state = "finished" if is_finished(cell.run_dir(out)) else "to run"
            print(f"{cell.key} ({state}): {cell.command(out)}")
        done = sum(is_finished(c.run_dir(out)) for c in cells)
        console.info(f"{len(cells)} cells, {done} finished, {len(cells) - done} to run")
        return
    if not args.report_only:
        protocols = _chosen("--protocols", args.protocols, list(study.protocols))
        configs = _chosen("--configs", args.configs, list(study.configs))
        chosen = [cell for cell in cells if cell.protocol in protocols and cell.config in configs]
        if args.max_cells is not None:
            chosen = [cell for cell in chosen if not is_finished(cell.run_dir(out))][:args.max_cells]
        run_cells(chosen, out)
    command = shlex.join(["crossearth-gate", "study", str(args.study), "--out", str(out)])
    summary = write_results(study, cells, out, command)
    for claim in summary["claims"]:
        console.info(f"{escape(claim['name'])}: {claim['verdict']} (n={claim['n']})")
    console.info(f"study written to {out / 'study.md'} and {out / 'results.json'}")
