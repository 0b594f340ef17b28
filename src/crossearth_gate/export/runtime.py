"""The onnxruntime runner: an exported graph behind the same call as a PyTorch model (window batch → logits),
so ``predict`` runs it through the same sliding-window and GeoTIFF code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..model.artefacts import ModelSpec
from ..util.errors import UserError
from .metadata import INPUT, spec_and_window
from .requirements import require


def session_options(threads: int | None = None, optimise: bool = True) -> Any:
    """Intra-op threads as PyTorch's (fair comparisons, and the lock's 2 cores), full graph optimisation."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimise
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return options


class OnnxRunner:
    """(B, C, window, window) normalised float32 → (B, classes, window, window) logits on the CPU."""

    def __init__(self, path: Path, threads: int | None = None, optimise: bool = True):
        ort = require("onnxruntime")
        try:
            self.session = ort.InferenceSession(str(path), session_options(threads, optimise),
                                                providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types for unreadable models
            raise UserError(f"{path}: not a readable ONNX model ({' '.join(str(err).split())[:200]})") from None
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        try:
            self.spec, self.window = spec_and_window(props)
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"{path}: not a crossearth-gate ONNX export (metadata: {err})") from None

    def __call__(self, batch: Tensor) -> Tensor:
        images = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {INPUT: images})[0])


def is_onnx(path: Path) -> bool:
    return path.suffix.lower() == ".onnx"


def load_onnx(path: Path) -> tuple[OnnxRunner, ModelSpec, int]:
    if not path.is_file():
        raise UserError(f"{path}: model file not found")
    runner = OnnxRunner(path)
    return runner, runner.spec, runner.window
