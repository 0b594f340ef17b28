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
COLOURS = ("red", "green", "blue")


def channel_names(spec: ModelSpec, channels: int) -> list[str]:
    """One name per input channel: ``red``, ``green``, ``blue`` for a model trained on 8-bit RGB; else the file
    band each channel reads, with the pretrained kernel it takes (``band 4 (red)``; ``band 8`` for a new one)."""
    bands = (spec.radiometry or {}).get("bands")
    if bands is None and spec.band_kernels is None:
        return list(BANDS)
    kernels = spec.band_kernels or [0, 1, 2]
    names = [f"band {b}" for b in bands] if bands is not None else [f"channel {c + 1}" for c in range(channels)]
    return [name if k < 0 else f"{name} ({COLOURS[k]})" for name, k in zip(names, kernels, strict=True)]


def normalisation(spec: ModelSpec) -> dict[str, Any]:
    """What the graph's input must be: the run's radiometry (per-channel statistics for non-8-bit data)."""
    radiometry = spec.radiometry
    if radiometry is None:
        return {"scale": 1 / 255, "mean": spec.mean, "std": spec.std, "formula": "(pixel / 255 - mean) / std per band"}
    divisor = float(radiometry["divisor"])
    return {"scale": 1 / divisor, "mean": list(radiometry["mean"]), "std": list(radiometry["std"]),
            "formula": f"(pixel / {divisor:g} - mean) / std per channel", "mode": radiometry["mode"],
            "nodata": radiometry.get("nodata")}


def metadata_of(spec: ModelSpec, window: int, graph_slots: list[str], folded: list[str],
                channels: int = 3) -> dict[str, str]:
    """``graph_slots``: the slots computed in the graph; ``folded``: LoRA slots merged into the weights;
    ``channels``: the graph's input channels (more than three where the patch embedding grew to the data's)."""
    values: dict[str, Any] = {
        "classes": spec.classes,
        "palette": spec.palette,
        "normalisation": normalisation(spec),
        "bands": channel_names(spec, channels),
        "window": window,
        "input": {"name": INPUT, "shape": ["batch", channels, window, window], "dtype": "float32"},
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
