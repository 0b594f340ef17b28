"""``crossearth-gate predict``: segment images, folders or GeoTIFF scenes with a trained model."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "predict"
OUT_FILES: tuple[str, ...] = ()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="segment images, folders or GeoTIFF scenes with a trained model")
    p.add_argument("inputs", nargs="+", type=Path, help="image files, folders or GeoTIFFs")
    p.add_argument("--model", "-m", required=True, type=Path,
                   help="a run directory, a trainable/exported .safetensors file, or an exported .onnx graph")
    p.add_argument("--out", "-o", required=True, type=Path, help="output folder")
    p.add_argument("--weights", help="backbone weights to use instead of the recorded source")
    p.add_argument("--bands", help="1-based band order for GeoTIFFs, e.g. 3,2,1 or 1,1,1")
    p.add_argument("--window", type=int, help="sliding window size (default: the training crop)")
    p.add_argument("--overlap", type=float, default=1 / 3, help="window overlap fraction (default 1/3)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--tile", type=int, default=2048, help="GeoTIFF tile read at once (pixels)")
    p.add_argument("--overlay", action="store_true", help="also write an RGB overlay PNG")
    p.add_argument("--no-merge", action="store_true", help="keep LoRA unmerged (for debugging)")


def run(args: argparse.Namespace) -> None:
    from ..predict import predict_cli

    predict_cli(args)
