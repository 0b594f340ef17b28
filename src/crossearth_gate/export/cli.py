"""``crossearth-gate export``: adapters + head as safetensors (the default), or the deployable ONNX graph."""

from __future__ import annotations

import argparse

from ..model.artefacts import export_model, model_file
from ..util import console
from ..util.errors import UserError
from .onnx_graph import check_format, export_onnx


def export_cli(args: argparse.Namespace) -> None:
    if check_format(args.format) == "onnx":
        spec = export_onnx(args.model, args.out, args.window, args.weights)
        console.info(f"exported {args.out}: {spec.backbone} + {spec.head} head as one ONNX graph")
        return
    for option, value in (("--window", args.window), ("--weights", args.weights)):
        if value is not None:
            raise UserError(f"{option} applies to --format onnx only")
    weights, sidecar = export_model(model_file(args.model), args.out)
    console.info(f"exported {weights} and {sidecar}")
