"""``crossearth-gate table``: our runs in the paper's tables, with the paper's numbers beside them."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "table"
OUT_FILES: tuple[str, ...] = ("out",)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="our runs in the paper's tables, with the paper's numbers beside them")
    p.add_argument("runs", nargs="+", type=Path, help="run directories (any of the 18 benchmark settings)")
    p.add_argument("--out", "-o", type=Path, help="also write the markdown table to this file")


def run(args: argparse.Namespace) -> None:
    from ..runs.table import table_cli
    from ..util import console

    print(table_cli(args.runs, args.out), end="")
    if args.out is not None:
        console.info(f"table written to {args.out}")
