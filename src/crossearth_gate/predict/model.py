"""Model loading: the Predictor (a runner plus the window geometry it runs with), from a PyTorch model
(merged, eval mode) or an ONNX export (onnxruntime); both run through the same sliding-window code."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ..data.radiometry import Radiometry, imagenet
from ..data.transforms import EvalTransform
from ..export.runtime import is_onnx, load_onnx
from ..model.artefacts import ModelSpec, load_trainable, model_file
from ..model.inference import sliding_window_logits_at, window_starts
from ..model.merge import merge_for_inference
from ..util.errors import UserError
from .radiometry import NODATA, Stretch, to_rgb

Advance = Callable[[int], None]


class Runner(Protocol):
    """What both runners implement: a (B, C, window, window) normalised batch → (B, classes, window, window)
    logits. A PyTorch ``Segmentor`` is one; ``export.runtime.OnnxRunner`` is the other."""

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...


@dataclass
class Predictor:
    """A runner (merged eval-mode model, or onnxruntime session) plus the window geometry it is run with."""

    model: Runner
    spec: ModelSpec
    window: int
    stride: int
    batch_size: int
    device: torch.device

    def grid(self, height: int, width: int) -> tuple[list[int], list[int]]:
        """Row and column window starts of the whole-image sliding window for this size."""
        return window_starts(height, self.window, self.stride), window_starts(width, self.window, self.stride)

    @property
    def radiometry(self) -> Radiometry:
        """How training read and normalised pixels (ImageNet's on 8-bit RGB for models saved before it)."""
        if self.spec.radiometry is None:
            return imagenet(self.spec.mean, self.spec.std)
        return Radiometry.from_dict(self.spec.radiometry)

    @property
    def channels(self) -> int:
        """Input channels the model reads: one per ``band_kernels`` entry (a grown embedding), else R, G, B."""
        return 3 if self.spec.band_kernels is None else len(self.spec.band_kernels)

    def display_bands(self, bands: list[int]) -> list[int]:
        """Of the bands read for the model, the ones shown as R, G, B (the model's own R, G, B channels)."""
        return [bands[c - 1] for c in self.radiometry.rgb_bands]

    @property
    def trained_bands(self) -> list[int] | None:
        bands = self.radiometry.bands
        return None if bands is None else list(bands)

    def pixels(self, data: np.ndarray, nodata: np.ndarray, stretch: Stretch | None) -> np.ndarray:
        """(C, h, w) raw band data → the HxWxC array ``classify`` takes: raw values (nodata filled) for a model
        trained on statistics, else 8-bit (stretched when the data is not 8-bit, as the model saw 8-bit)."""
        radiometry = self.radiometry
        if radiometry.mode != "statistics":
            return to_rgb(data, nodata, stretch)
        values = data.astype(np.float32)
        values[:, nodata] = radiometry.fill()[:, None]
        return np.ascontiguousarray(values.transpose(1, 2, 0))

    def classify(self, rgb: np.ndarray, row_starts: Sequence[int], col_starts: Sequence[int],
                 advance: Advance) -> np.ndarray:
        """HxWxC pixels → HxW uint8 class indices from the given windows, normalised exactly as in evaluation."""
        image, _ = EvalTransform(radiometry=self.radiometry)(rgb, None)

        def forward(batch: torch.Tensor) -> torch.Tensor:
            logits = self.model(batch)
            advance(len(batch))
            return logits

        logits = sliding_window_logits_at(forward, image.to(self.device), self.window, row_starts, col_starts,
                                          len(self.spec.classes), self.batch_size)
        return logits.argmax(0).to(torch.uint8).cpu().numpy()


def load_predictor(args: argparse.Namespace) -> Predictor:
    """Load (and unless --no-merge, merge) the model; check window and overlap against its patch size."""
    if not 0 <= args.overlap < 1:
        raise UserError(f"--overlap {args.overlap} must be in [0, 1)")
    if is_onnx(args.model):
        return _onnx_predictor(args)
    model, spec = load_trainable(model_file(args.model), args.weights)
    _check_classes(args, spec)
    patch = model.backbone.patch_size
    window = spec.img_size if args.window is None else args.window
    if window < patch or window % patch:
        raise UserError(f"--window {window} must be a positive multiple of the backbone patch size {patch}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.no_merge:
        model = merge_for_inference(model)
    return Predictor(model.to(device).eval(), spec, window, _stride(window, args), args.batch_size, device)


def _onnx_predictor(args: argparse.Namespace) -> Predictor:
    """An exported graph: its window is fixed, its backbone and merge already inside."""
    for option, given in (("--weights", args.weights is not None), ("--no-merge", args.no_merge)):
        if given:
            raise UserError(f"{option} does not apply to an ONNX model ({args.model}): its weights are inside it")
    runner, spec, window = load_onnx(args.model)
    _check_classes(args, spec)
    if args.window is not None and args.window != window:
        raise UserError(f"--window {args.window}: {args.model} was exported for a {window} px window; "
                        "export it again with --window to change it")
    return Predictor(runner, spec, window, _stride(window, args), args.batch_size, torch.device("cpu"))


def _check_classes(args: argparse.Namespace, spec: ModelSpec) -> None:
    if len(spec.classes) > NODATA:
        raise UserError(f"{args.model}: {len(spec.classes)} classes do not fit uint8 outputs with 255 = nodata")


def _stride(window: int, args: argparse.Namespace) -> int:
    return max(1, round(window * (1 - args.overlap)))
