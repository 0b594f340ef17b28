"""``crossearth-gate study``: configs x protocols x seeds, resumable, with means, intervals and verdicts."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "study"
OUT_FILES: tuple[str, ...] = ()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="run configs x protocols x seeds (resumable); means, intervals, verdicts")
    p.add_argument("study", type=Path, help="study YAML, e.g. configs/studies/paper_claims.yaml")
    p.add_argument("--out", "-o", required=True, type=Path, help="study folder (runs/, results.json, study.md)")
    p.add_argument("--protocols", nargs="+", metavar="P",
                   help="run only these protocols' cells now (the report covers every cell of the study)")
    p.add_argument("--configs", nargs="+", metavar="C",
                   help="run only these configs' cells now (the report covers every cell of the study)")
    p.add_argument("--max-cells", type=int, metavar="N",
                   help="run at most N unfinished cells, then report (a long study in slices: the CPU is free between)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and their commands; run nothing")
    p.add_argument("--report-only", action="store_true", help="re-aggregate the finished cells; run nothing")


def run(args: argparse.Namespace) -> None:
    from ..study.cli import study_cli

    study_cli(args)
