"""Rasters through rasterio: grids, band choice, nodata, regions and window reads (never a whole scene).

Everything GDAL opens works, ``/vsicurl/`` URLs included. JPEG/PNG stay with PIL (``is_raster``) so
today's decoded pixels, and so today's numbers, do not move.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.errors
import rasterio.windows
from rasterio.enums import MaskFlags
from rasterio.transform import Affine

from crossearth_gate.util.errors import UserError

PLAIN_SUFFIXES = (".jpg", ".jpeg", ".png")
_SCHEME = re.compile(r"^(/vsi\w+/)(https?|ftp|s3|gs):/(?!/)")


def gdal_path(path: str | Path) -> str:
    """The string GDAL needs: ``Path`` collapses ``/vsicurl/http://`` to ``http:/``; put the slash back."""
    return _SCHEME.sub(r"\1\2://", str(path))


def is_remote(path: str | Path) -> bool:
    return str(path).startswith("/vsi")


def is_raster(path: str | Path) -> bool:
    """Read through rasterio (GeoTIFF, anything GDAL opens) rather than PIL (JPEG/PNG)."""
    return Path(str(path)).suffix.lower() not in PLAIN_SUFFIXES


@contextmanager
def raster_errors(path: str | Path) -> Iterator[None]:
    """GDAL's errors while opening or reading ``path`` as one line naming the file."""
    try:
        yield
    except rasterio.errors.RasterioIOError as err:
        if not is_remote(path) and not Path(path).exists():
            raise UserError(f"file not found: {path}") from None
        raise UserError(f"cannot read {path}: {' '.join(str(err).split())}") from None
    except rasterio.errors.RasterioError as err:
        raise UserError(f"cannot read {path}: {' '.join(str(err).split())}") from None


def _open(path: str | Path) -> rasterio.DatasetReader:
    # A remote file is opened without listing its "folder" (one request instead of many).
    options = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"} if is_remote(path) else {}
    with rasterio.Env(**options), warnings.catch_warnings():
        # a plain grid (a label mask, a JPEG) is allowed: Grid compares transforms only when both have one
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        return rasterio.open(gdal_path(path))


@contextmanager
def open_raster(path: str | Path) -> Iterator[rasterio.DatasetReader]:
    """rasterio.open with GDAL's errors as one line naming the file; closed on leaving."""
    with raster_errors(path):
        with _open(path) as src:
            yield src


KEPT_OPEN = 32
_kept: OrderedDict[tuple[int, str], rasterio.DatasetReader] = OrderedDict()


def kept_open(path: str | Path) -> rasterio.DatasetReader:
    """A dataset this process keeps open (the last ``KEPT_OPEN`` files): a training crop reads its window
    without opening the file again, which cost more than reading a 224-pixel window. Keyed by process, so a
    DataLoader worker opens its own. Call inside ``raster_errors(path)``."""
    key = (os.getpid(), str(path))
    src = _kept.get(key)
    if src is None or src.closed:
        src = _kept[key] = _open(path)
        mine = [k for k in _kept if k[0] == key[0]]
        if len(mine) > KEPT_OPEN:
            _kept.pop(mine[0]).close()
    _kept.move_to_end(key)
    return src


@dataclass(frozen=True)
class Grid:
    """What must agree between an image and its label, and between the images of one dataset."""

    height: int
    width: int
    count: int
    dtypes: tuple[str, ...]
    transform: Affine
    crs: str | None
    nodata: float | None

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None or self.transform != Affine.identity()


def grid_of(path: str | Path) -> Grid:
    with open_raster(path) as src:
        return Grid(src.height, src.width, src.count, tuple(src.dtypes), src.transform,
                    None if src.crs is None else src.crs.to_string(), src.nodata)


def check_label_grid(image: str | Path, image_grid: Grid, label: str | Path, label_grid: Grid) -> None:
    """A label lies on its image's grid: same shape; same transform and CRS when both are georeferenced."""
    ih, iw, lh, lw = image_grid.height, image_grid.width, label_grid.height, label_grid.width
    if (ih, iw) != (lh, lw):
        raise UserError(f"label {label} is {lw}x{lh} but its image {image} is {iw}x{ih}")
    if not (image_grid.georeferenced and label_grid.georeferenced):
        return
    if image_grid.crs != label_grid.crs:
        raise UserError(f"label {label} is in CRS {label_grid.crs} but its image {image} in {image_grid.crs}")
    if not image_grid.transform.almost_equals(label_grid.transform, precision=1e-9):
        raise UserError(f"label {label} is off the grid of its image {image}: transform "
                        f"{tuple(label_grid.transform)[:6]} vs {tuple(image_grid.transform)[:6]}")


def resolve_bands(bands: tuple[int, ...] | list[int] | None, count: int, path: str | Path) -> list[int]:
    """The 1-based bands to read, checked against the file; one band is repeated into RGB by default."""
    if bands is None:
        if count == 3:
            return [1, 2, 3]
        if count == 1:
            return [1, 1, 1]
        raise UserError(f"{path}: has {count} bands; choose them with `bands` (e.g. [3, 2, 1], [1, 1, 1] or "
                        "[3, 2, 1, 4] with rgb_bands)")
    missing = [b for b in bands if b > count or b < 1]
    if missing:
        raise UserError(f"{path}: band {missing[0]} asked for but the file has {count} band(s)")
    return list(bands)


@dataclass(frozen=True)
class Region:
    """A pixel window of a scene: rows [row0, row0 + height), columns [col0, col0 + width)."""

    row0: int
    col0: int
    height: int
    width: int

    def overlaps(self, other: Region) -> bool:
        return (self.row0 < other.row0 + other.height and other.row0 < self.row0 + self.height
                and self.col0 < other.col0 + other.width and other.col0 < self.col0 + self.width)

    def window(self) -> rasterio.windows.Window:
        return rasterio.windows.Window(self.col0, self.row0, self.width, self.height)


def region_of(pixels: list[int] | None, bounds: list[float] | None, grid: Grid, path: str | Path) -> Region:
    """The region a domain uses of this scene (whole scene when neither is given), inside the scene."""
    if pixels is not None and bounds is not None:
        raise UserError(f"region of {path}: give `pixels` or `bounds`, not both")
    if pixels is not None:
        if len(pixels) != 4 or min(pixels) < 0 or pixels[2] < 1 or pixels[3] < 1:
            raise UserError(f"region pixels of {path}: [col_off, row_off, width, height], got {pixels}")
        col0, row0, width, height = (int(v) for v in pixels)
    elif bounds is not None:
        if len(bounds) != 4 or not grid.georeferenced:
            raise UserError(f"region bounds of {path}: [left, bottom, right, top] on a georeferenced scene, "
                            f"got {bounds}")
        w = rasterio.windows.from_bounds(*bounds, transform=grid.transform)
        col0, row0 = round(w.col_off), round(w.row_off)
        width, height = round(w.col_off + w.width) - col0, round(w.row_off + w.height) - row0
    else:
        return Region(0, 0, grid.height, grid.width)
    if col0 < 0 or row0 < 0 or width < 1 or height < 1 or col0 + width > grid.width or row0 + height > grid.height:
        raise UserError(f"region of {path} (cols {col0}..{col0 + width}, rows {row0}..{row0 + height}) is not "
                        f"inside the {grid.width}x{grid.height} scene")
    return Region(row0, col0, height, width)


def read_bands(src: rasterio.DatasetReader, bands: list[int], window: rasterio.windows.Window,
               nodata: float | None, out_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(C, h, w) float32 band data and the (h, w) valid pixels (some used band holds a value: GDAL's rule).

    ``nodata`` overrides the file's own nodata value; NaN/inf of float data is never valid.
    """
    shape = None if out_shape is None else (len(bands), *out_shape)
    every_pixel_valid = all(src.mask_flag_enums[b - 1] == [MaskFlags.all_valid] for b in bands)
    if nodata is None and not every_pixel_valid:  # a masked read costs several plain ones: only when it can mask
        data = src.read(indexes=bands, window=window, masked=True, out_shape=shape)
        band_valid = ~np.ma.getmaskarray(data)
        values = np.asarray(data.data, dtype=np.float32)
    else:
        values = np.asarray(src.read(indexes=bands, window=window, out_shape=shape), dtype=np.float32)
        band_valid = np.ones_like(values, bool) if nodata is None else values != np.float32(nodata)
    band_valid &= np.isfinite(values)
    return values, band_valid.any(axis=0)


def decimated_shape(height: int, width: int, side: int) -> tuple[int, int]:
    scale = min(1.0, side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def read_label(path: str | Path, window: rasterio.windows.Window | None) -> np.ndarray:
    """Raw label band 1 over the window (its values decoded by the dataset's definition)."""
    with raster_errors(path):
        src = kept_open(path)
        if src.count != 1 and src.count != 3:
            raise UserError(f"{path}: expected a 1-band label raster (or RGB colours), found {src.count} bands")
        if src.count == 3:
            return np.moveaxis(src.read(window=window), 0, -1)
        return src.read(1, window=window)
