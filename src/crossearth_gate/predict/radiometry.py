"""Radiometry: raw band data → 8-bit RGB via one per-scene percentile stretch, with nodata handling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio

NODATA = 255
STRETCH_PERCENTILES = (2.0, 98.0)
STATS_SIDE = 1024


@dataclass(frozen=True)
class Stretch:
    """Per-band linear map of [low, high] onto 0..255 (None in place of a Stretch: data is uint8)."""

    low: np.ndarray
    high: np.ndarray

    def apply(self, data: np.ndarray) -> np.ndarray:
        scaled = (data.astype(np.float32) - self.low[:, None, None]) / (self.high - self.low)[:, None, None]
        return np.rint(np.clip(np.nan_to_num(scaled), 0.0, 1.0) * 255.0).astype(np.uint8)


def _read(src: rasterio.DatasetReader, bands: list[int], **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """(3, h, w) raw band data and where each band holds a usable value (not nodata/masked, finite)."""
    data = src.read(indexes=bands, masked=True, **kwargs)
    valid = ~np.ma.getmaskarray(data)
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.isfinite(data.data)
    return data.data, valid


def nodata_pixels(valid: np.ndarray) -> np.ndarray:
    """HxW pixels where no used band holds a value (GDAL's dataset-mask rule).

    A single band at its nodata value is not enough: dark water with red = 0 is still a pixel.
    """
    return ~valid.any(axis=0)


def _overview_shape(height: int, width: int, side: int) -> tuple[int, int]:
    scale = min(1.0, side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def scene_stretch(src: rasterio.DatasetReader, bands: list[int]) -> Stretch | None:
    """Percentile stretch from one decimated read of the whole scene; None for uint8 data."""
    if all(src.dtypes[b - 1] == "uint8" for b in bands):
        return None
    data, valid = _read(src, bands, out_shape=(len(bands), *_overview_shape(src.height, src.width, STATS_SIDE)))
    low, high = np.array([_percentiles(band[ok]) for band, ok in zip(data, valid, strict=True)]).T
    return Stretch(low, np.maximum(high, low + 1e-6))


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    """The band's stretch range; (0, 1) when the overview shows no valid value at all."""
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values.astype(np.float64), STRETCH_PERCENTILES)
    return float(low), float(high)


def to_rgb(data: np.ndarray, nodata: np.ndarray, stretch: Stretch | None) -> np.ndarray:
    """(3, h, w) band data → HxWx3 uint8 with nodata pixels black."""
    rgb = data.astype(np.uint8) if stretch is None else stretch.apply(data)
    rgb[:, nodata] = 0
    return np.ascontiguousarray(rgb.transpose(1, 2, 0))
