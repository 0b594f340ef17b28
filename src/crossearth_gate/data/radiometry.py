"""Radiometry: the one normalisation fit, evaluation and predict apply, and its statistics.

8-bit data keeps ImageNet's (x / 255 - mean) / std, so today's numbers do not move. Anything else is
standardised per channel with means and deviations computed ONCE from the training images, streamed
from decimated reads (at most ``STATS_SIDE`` pixels a side per image), nodata excluded. The result
travels in the run folder and the saved model, so predict normalises exactly as training did.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossearth_gate.data.raster import Region, decimated_shape, open_raster, read_bands
from crossearth_gate.util.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STATS_SIDE = 1024
DISPLAY_PERCENTILES = (2.0, 98.0)


@dataclass(frozen=True)
class Radiometry:
    """(x / divisor - mean) / std per channel; ``bands`` and ``nodata`` say how x was read."""

    mode: str  # imagenet | statistics
    mean: tuple[float, ...]
    std: tuple[float, ...]
    divisor: float = 255.0
    bands: tuple[int, ...] | None = None
    nodata: float | None = None
    rgb_bands: tuple[int, ...] = (1, 2, 3)  # which channels (1-based) are R, G, B for the backbone

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean or min(self.std) <= 0:
            raise UserError(f"mean and std need one value per channel with std > 0, got mean={self.mean} "
                            f"std={self.std}")

    @property
    def channels(self) -> int:
        return len(self.mean)

    def fill(self) -> np.ndarray:
        """Raw value per channel that normalises to 0: what nodata pixels are set to before resampling."""
        return np.array([m * self.divisor for m in self.mean], dtype=np.float32)

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """Float (C, H, W) raw values → normalised (the expression today's 8-bit path always used)."""
        m = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        s = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        return (image / self.divisor - m) / s

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Radiometry:
        return cls(raw["mode"], tuple(raw["mean"]), tuple(raw["std"]), float(raw["divisor"]),
                   None if raw.get("bands") is None else tuple(raw["bands"]), raw.get("nodata"),
                   tuple(raw.get("rgb_bands") or (1, 2, 3)))


def display_rgb(image: torch.Tensor, radiometry: Radiometry) -> np.ndarray:
    """A normalised (C, H, W) image as displayable HxWx3 uint8: its R, G, B channels, as a person would see them.

    ImageNet-normalised 8-bit data goes back to its own pixels. Standardised data (any dtype, any band
    count) has no display range of its own: its R, G, B channels are stretched from their 2nd to 98th
    percentile, the usual look of a multispectral scene (linear, so raw and normalised values stretch alike).
    """
    if radiometry.mode == "imagenet":
        m = torch.tensor(radiometry.mean, device=image.device).view(-1, 1, 1)
        s = torch.tensor(radiometry.std, device=image.device).view(-1, 1, 1)
        rgb = ((image * s + m).clamp(0, 1) * 255).round().byte()
        return rgb.permute(1, 2, 0).cpu().numpy()
    picked = image.detach()[[c - 1 for c in radiometry.rgb_bands]].float().cpu().numpy().astype(np.float64)
    low, high = np.percentile(picked.reshape(3, -1), DISPLAY_PERCENTILES, axis=1)
    scaled = (picked - low[:, None, None]) / np.maximum(high - low, 1e-12)[:, None, None]
    return np.ascontiguousarray((np.clip(scaled, 0.0, 1.0) * 255).round().astype(np.uint8).transpose(1, 2, 0))


def imagenet(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
             bands: tuple[int, ...] | None = None, nodata: float | None = None) -> Radiometry:
    return Radiometry("imagenet", tuple(float(v) for v in mean), tuple(float(v) for v in std), 255.0, bands, nodata)


@dataclass
class _Moments:
    """Running per-channel sums in float64 (exact enough for 16-bit sums over billions of pixels)."""

    total: np.ndarray
    squares: np.ndarray
    count: int = 0

    def add(self, values: np.ndarray, valid: np.ndarray) -> None:
        picked = values[:, valid].astype(np.float64)
        self.total += picked.sum(axis=1)
        self.squares += (picked * picked).sum(axis=1)
        self.count += int(valid.sum())


Scene = tuple[str | Path, Region]


def band_statistics(scenes: Sequence[Scene], bands: list[int], nodata: float | None,
                    side: int = STATS_SIDE) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation over the valid pixels of the scenes' regions.

    Each region is read once, decimated to at most ``side`` pixels a side (GDAL's overviews when the file
    has them), so a 20,000² scene costs a 1024² read. A constant band is refused: it cannot be standardised.
    """
    moments = _Moments(np.zeros(len(bands)), np.zeros(len(bands)))
    for path, region in scenes:
        with open_raster(path) as src:
            shape = decimated_shape(region.height, region.width, side)
            values, valid = read_bands(src, bands, region.window(), nodata, out_shape=shape)
        if not valid.any():
            raise UserError(f"{path}: every pixel of the training region is nodata")
        moments.add(values, valid)
    mean = moments.total / moments.count
    var = np.maximum(moments.squares / moments.count - mean * mean, 0.0)
    std = np.sqrt(var)
    for channel, (band, dev) in enumerate(zip(bands, std, strict=True)):
        if not math.isfinite(dev) or dev <= 1e-12 * max(1.0, abs(mean[channel])):
            raise UserError(f"band {band} of the training images is constant ({mean[channel]:g}): its statistics "
                            "would divide by zero; drop it from `bands`")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
