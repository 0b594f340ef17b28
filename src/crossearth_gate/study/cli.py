"""``crossearth-gate study STUDY.yaml --out DIR``: run (or list, or re-aggregate) a study, then report it."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from rich.markup import escape

from .. import console
from ..atomic import atomic_write_json, atomic_write_text
from ..errors import UserError
from .aggregate import aggregate
from .figures import write_figures
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
    figures = write_figures(summary, records, out)
    atomic_write_text(out / "study.md", study_markdown(study, summary, figures, command, out))
    return summary


def study_cli(args: argparse.Namespace) -> None:
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
        chosen = args.protocols or list(study.protocols)
        unknown = sorted(set(chosen) - set(study.protocols))
        if unknown:
            raise UserError(f"--protocols: {', '.join(unknown)} not in the study (it has {', '.join(study.protocols)})")
        run_cells([cell for cell in cells if cell.protocol in chosen], out)
    command = shlex.join(["crossearth-gate", "study", str(args.study), "--out", str(out)])
    summary = write_results(study, cells, out, command)
    for claim in summary["claims"]:
        console.info(f"{escape(claim['name'])}: {claim['verdict']} (n={claim['n']})")
    console.info(f"study written to {out / 'study.md'} and {out / 'results.json'}")
