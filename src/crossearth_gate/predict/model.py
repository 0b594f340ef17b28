"""Model loading: the merged, eval-mode Predictor and the window geometry it runs with."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..data.radiometry import Radiometry, imagenet
from ..data.transforms import EvalTransform
from ..model.artefacts import ModelSpec, load_trainable, model_file
from ..model.inference import sliding_window_logits_at, window_starts
from ..model.merge import merge_for_inference
from ..model.segmentor import Segmentor
from ..util.errors import UserError
from .radiometry import NODATA, Stretch, to_rgb

Advance = Callable[[int], None]


@dataclass
class Predictor:
    """A merged, eval-mode model plus the window geometry it is run with."""

    model: Segmentor
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
    model, spec = load_trainable(model_file(args.model), args.weights)
    if len(spec.classes) > NODATA:
        raise UserError(f"{args.model}: {len(spec.classes)} classes do not fit uint8 outputs with 255 = nodata")
    patch = model.backbone.patch_size
    window = spec.img_size if args.window is None else args.window
    if window < patch or window % patch:
        raise UserError(f"--window {window} must be a positive multiple of the backbone patch size {patch}")
    if not 0 <= args.overlap < 1:
        raise UserError(f"--overlap {args.overlap} must be in [0, 1)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.no_merge:
        model = merge_for_inference(model)
    stride = max(1, round(window * (1 - args.overlap)))
    return Predictor(model.to(device).eval(), spec, window, stride, args.batch_size, device)
