"""``crossearth-gate export``: adapters + head as safetensors, or the whole merged model as one ONNX graph."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "export"
OUT_FILES: tuple[str, ...] = ("out",)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="export adapters + head as safetensors (+ JSON sidecar), or the whole "
                                   "merged model as one ONNX graph")
    p.add_argument("model", type=Path, help="a run directory or trainable.safetensors")
    p.add_argument("--out", "-o", required=True, type=Path, help="output .safetensors or .onnx path")
    p.add_argument("--format", default="safetensors", help="safetensors (default) or onnx")
    p.add_argument("--window", type=int, help="onnx: the graph's fixed window (default: the training crop)")
    p.add_argument("--weights", help="onnx: backbone weights to use instead of the recorded source")


def run(args: argparse.Namespace) -> None:
    from ..export.cli import export_cli

    export_cli(args)
