"""``crossearth-gate fit``: train on the source domain, then test every target domain."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config.schema import RunConfig

NAME = "fit"
OUT_FILES: tuple[str, ...] = ()


def add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. train.lr=1e-3")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="train on the source domain, then test every target domain")
    p.add_argument("--config", "-c", required=True, help="YAML config path or packaged name (e.g. demo)")
    p.add_argument("--out", type=Path, help="run directory (default: runs/<name>)")
    p.add_argument("--no-resume", action="store_true", help="start over even if a last checkpoint exists")
    add_overrides(p)


def train(cfg: RunConfig, out: Path, resume: bool) -> None:
    """Shared by ``fit`` and ``demo``: the checks that need the backbone and the files, then the run."""
    from ..config.validation import check_runtime
    from ..training.run import fit
    from ..util import console

    check_runtime(cfg)
    metrics = fit(cfg, out, resume=resume)
    if metrics is not None:
        console.print_run_summary(metrics, out)


def run(args: argparse.Namespace) -> None:
    from ..config.schema import load_config
    from ..util.outputs import check_out_folder

    cfg = load_config(args.config, args.overrides)
    out = args.out or Path("runs") / cfg.name
    check_out_folder(out)  # runs/<name> is known only now
    train(cfg, out, resume=not args.no_resume)
