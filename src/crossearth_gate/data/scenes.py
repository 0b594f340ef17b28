"""Raster scenes as crop sources: a region of an image (and its label) read window by window.

A ``RasterScene`` holds only paths and numbers, so datasets pickle into DataLoader workers, and every
read opens the file for just the window it needs: a 20,000² scene is never decoded whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio.windows
import torch

from crossearth_gate.data.datasets import decode_label
from crossearth_gate.data.definition import DatasetInfo
from crossearth_gate.data.raster import (
    Grid,
    Region,
    check_label_grid,
    decimated_shape,
    grid_of,
    kept_open,
    open_raster,
    raster_errors,
    read_bands,
    read_label,
    region_of,
    resolve_bands,
)
from crossearth_gate.data.transforms import as_tensor
from crossearth_gate.util.errors import UserError
from crossearth_gate.util.labels import IGNORE_INDEX

CHECK_SIDE = 256  # side of the decimated read that looks for an all-nodata image


@dataclass
class RasterScene:
    """One image region as a ``Reader``: raw band values (nodata set to ``fill``) and decoded labels."""

    image: str
    label: str | None
    bands: list[int]
    nodata: float | None
    region: Region
    info: DatasetInfo
    dtype: str
    fill: np.ndarray | None = None  # raw values that normalise to 0; set by the dataset from its radiometry

    @property
    def shape(self) -> tuple[int, int]:
        return self.region.height, self.region.width

    def _window(self, y0: int, y1: int, x0: int, x1: int) -> rasterio.windows.Window:
        return rasterio.windows.Window(self.region.col0 + x0, self.region.row0 + y0, x1 - x0, y1 - y0)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> tuple[torch.Tensor, np.ndarray | None, float]:
        window = self._window(y0, y1, x0, x1)
        with raster_errors(self.image):
            values, valid = read_bands(kept_open(self.image), self.bands, window, self.nodata)
        if self.fill is not None and not valid.all():
            values[:, ~valid] = self.fill[:, None]
        image = as_tensor(np.ascontiguousarray(values.transpose(1, 2, 0)), x0 == 0 and x1 == self.region.width)
        mask = None
        if self.label is not None:
            mask = decode_label(read_label(self.label, window), self.label, self.info)
            mask[~valid] = IGNORE_INDEX  # nodata is no evidence for any class: out of loss and metrics
        return image, mask, float(valid.mean())


def open_scene(image: Path, label: Path | None, info: DatasetInfo, pixels: list[int] | None,
               bounds: list[float] | None) -> tuple[RasterScene, Grid]:
    """Check an image (bands, region, not all nodata) and its label (on the image's grid) now, in one line."""
    grid = grid_of(image)
    bands = resolve_bands(info.bands, grid.count, image)
    region = region_of(pixels, bounds, grid, image)
    dtypes = {grid.dtypes[b - 1] for b in bands}
    if len(dtypes) > 1:
        raise UserError(f"{image}: bands {bands} have different dtypes ({', '.join(sorted(dtypes))})")
    if label is not None:
        check_label_grid(image, grid, label, grid_of(label))
        check_label_values(label, region, info)
    scene = RasterScene(str(image), None if label is None else str(label), bands, info.nodata, region, info,
                        dtypes.pop())
    with open_raster(image) as src:
        _, valid = read_bands(src, bands, region.window(), info.nodata,
                              out_shape=decimated_shape(region.height, region.width, CHECK_SIDE))
    if not valid.any():
        raise UserError(f"{image}: every pixel of bands {bands} is nodata" +
                        ("" if region.height == grid.height and region.width == grid.width else " in its region"))
    return scene, grid


def check_label_values(label: Path, region: Region, info: DatasetInfo) -> None:
    """Every stored value of the label's region decodes (a class or ignored), block by block, before training:
    a value with no class must stop the run at set-up, not halfway through it."""
    with open_raster(label) as src:
        seen: set[int] = set()
        for _, block in src.block_windows(1):
            window = block.intersection(region.window()) if _touches(block, region) else None
            if window is None:
                continue
            raw = src.read(window=window)
            if src.count == 1:
                seen.update(int(v) for v in np.unique(raw))
            else:  # colours: decode the distinct ones of this block
                decode_label(np.unique(raw.transpose(1, 2, 0).reshape(-1, src.count), axis=0)[:, None], label, info)
    if seen:
        decode_label(np.array(sorted(seen))[None], label, info)


def _touches(block: rasterio.windows.Window, region: Region) -> bool:
    return (block.row_off < region.row0 + region.height and region.row0 < block.row_off + block.height
            and block.col_off < region.col0 + region.width and region.col0 < block.col_off + block.width)
