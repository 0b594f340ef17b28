"""``crossearth-gate report``: runs side by side (tables, gate maps, curves, overlays)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "report"
OUT_FILES: tuple[str, ...] = ()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="compare runs side by side: tables, gate maps, curves, overlays")
    p.add_argument("runs", nargs="+", type=Path, help="run directories")
    p.add_argument("--out", "-o", required=True, type=Path)


def run(args: argparse.Namespace) -> None:
    from ..runs.report import write_report
    from ..util import console

    path = write_report(args.runs, args.out)
    console.info(f"report written to {path}")
