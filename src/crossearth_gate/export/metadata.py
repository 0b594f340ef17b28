"""What an exported graph carries in its ONNX ``metadata_props``: enough to predict without any other file.

Every value is a string (ONNX allows nothing else); lists and mappings are JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from ..model.artefacts import ModelSpec

FORMAT = "crossearth-gate-onnx/1"
INPUT = "images"
OUTPUT = "logits"
BANDS = ["red", "green", "blue"]  # 8-bit RGB, the training data's; predict maps other rasters onto it


def metadata_of(spec: ModelSpec, window: int, graph_slots: list[str], folded: list[str]) -> dict[str, str]:
    """``graph_slots``: the slots computed in the graph; ``folded``: LoRA slots merged into the weights."""
    values: dict[str, Any] = {
        "classes": spec.classes,
        "palette": spec.palette,
        "normalisation": {"scale": 1 / 255, "mean": spec.mean, "std": spec.std,
                          "formula": "(pixel / 255 - mean) / std per band"},
        "bands": BANDS,
        "window": window,
        "input": {"name": INPUT, "shape": ["batch", 3, window, window], "dtype": "float32"},
        "output": {"name": OUTPUT, "shape": ["batch", len(spec.classes), window, window]},
        "graph_slots": graph_slots,
        "folded_lora": folded,
        "spec": asdict(spec),
    }
    return {"format": FORMAT, **{key: json.dumps(value) for key, value in values.items()}}


def spec_and_window(props: dict[str, str]) -> tuple[ModelSpec, int]:
    """The model spec and window of an export's metadata; ValueError/KeyError/TypeError when it is not one."""
    if props.get("format") != FORMAT:
        raise ValueError(f"format {props.get('format')!r}")
    return ModelSpec(**json.loads(props["spec"])), int(json.loads(props["window"]))
