"""GeoTIFFs: tile-by-tile prediction into a georeferenced class raster, and its downsampled overlay."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import rasterio
import rasterio.errors
import rasterio.windows
from PIL import Image
from rich.progress import Progress

from ..data.raster import read_bands
from ..model.inference import Tile, Window, iter_tiles
from ..runs.plots import overlay
from ..util.atomic import atomic_write
from ..util.errors import UserError, WriteError
from .images import write_png
from .inputs import Job, check_plain_bands, resolve_bands
from .model import Advance, Predictor
from .radiometry import NODATA, STATS_SIDE, Stretch, _overview_shape, _read, nodata_pixels, scene_stretch, to_rgb

log = logging.getLogger(__name__)

OVERLAY_SIDE = 2048
BLOCK = 256


def check_geotiffs(jobs: list[Job], bands: list[int] | None, trained: list[int] | None = None) -> None:
    """Open every input and check its bands now, before the (possibly slow) model load."""
    for job in jobs:
        if not job.is_geotiff:
            check_plain_bands(job.source, bands)
        if job.is_geotiff:
            with _raster_errors(job.source), rasterio.open(job.source) as src:
                used = resolve_bands(bands, src.count, job.source, trained)
                _, valid = _read(src, used, out_shape=(len(used), *_overview_shape(src.height, src.width, STATS_SIDE)))
                if not valid.any():
                    log.warning("%s: every pixel of bands %s is nodata: the prediction will be all nodata (%d)",
                                job.source, ",".join(map(str, used)), NODATA)


def _rio_window(window: Window) -> rasterio.windows.Window:
    return rasterio.windows.Window(window.col_off, window.row_off, window.width, window.height)


@contextmanager
def _raster_errors(path: Path) -> Iterator[None]:
    """GDAL errors (corrupt or unreadable files) as one-line user errors naming the file."""
    try:
        yield
    except rasterio.errors.RasterioError as err:
        raise UserError(f"{path}: cannot read as a raster ({' '.join(str(err).split())})") from None


def _predict_tile(predictor: Predictor, src: rasterio.DatasetReader, bands: list[int], tile: Tile,
                  stretch: Stretch | None, advance: Advance) -> np.ndarray:
    """Class indices of the tile's core; tiles without any valid pixel skip the model."""
    data, valid = read_bands(src, bands, _rio_window(tile.read), predictor.radiometry.nodata)
    nodata = ~valid
    if nodata.all():
        advance(len(tile.row_starts) * len(tile.col_starts))
        classes = np.full(nodata.shape, NODATA, dtype=np.uint8)
    else:
        pixels = predictor.pixels(data, nodata, stretch)
        classes = predictor.classify(pixels, tile.row_starts, tile.col_starts, advance)
        classes[nodata] = NODATA
    rows = slice(tile.core_row, tile.core_row + tile.write.height)
    cols = slice(tile.core_col, tile.core_col + tile.write.width)
    return classes[rows, cols]


def _output_profile(src: rasterio.DatasetReader) -> dict:
    return {
        "driver": "GTiff", "width": src.width, "height": src.height, "count": 1, "dtype": "uint8",
        "crs": src.crs, "transform": src.transform, "nodata": NODATA, "compress": "lzw",
        "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK,
    }


def _colormap(palette: list[list[int]]) -> dict[int, tuple[int, int, int, int]]:
    colours = {i: (r, g, b, 255) for i, (r, g, b) in enumerate(palette)}
    return {**colours, NODATA: (0, 0, 0, 0)}


def predict_geotiff(predictor: Predictor, job: Job, bands_arg: list[int] | None, tile_size: int,
                    progress: Progress) -> tuple[Path, Stretch | None, list[int]]:
    """Tile-by-tile prediction into ``<stem>_pred.tif``, written to a temporary file and renamed."""
    with _raster_errors(job.source), rasterio.open(job.source) as src:
        bands = resolve_bands(bands_arg, src.count, job.source, predictor.trained_bands)
        shown = predictor.display_bands(bands)  # the overlay's R, G, B: all a 3-channel model reads
        stretch = scene_stretch(src, shown)  # statistics models ignore it (only the overlay shows it)
        tiles = list(iter_tiles(src.height, src.width, tile_size, predictor.window, predictor.stride))
        total = sum(len(t.row_starts) * len(t.col_starts) for t in tiles)
        task = progress.add_task(job.source.name, total=total)

        def advance(n: int) -> None:
            progress.advance(task, n)

        out = job.output("pred", ".tif")

        def write(tmp: str) -> None:
            with _write_errors(out):
                dst = rasterio.open(tmp, "w", **_output_profile(src))
            with dst:
                for tile in tiles:
                    core = _predict_tile(predictor, src, bands, tile, stretch, advance)  # read errors: the input's
                    with _write_errors(out):
                        dst.write(core, 1, window=_rio_window(tile.write))
                with _write_errors(out):
                    dst.write_colormap(1, _colormap(predictor.spec.palette))
                    dst.close()

        path = atomic_write(out, write, verify=lambda tmp: _verify_raster(tmp, out))
    return path, stretch, shown


@contextmanager
def _write_errors(out: Path) -> Iterator[None]:
    """GDAL's write errors (full disk, I/O) as one WriteError naming the output, not as a read error of the
    input; libtiff's own lines about the same failure (printed straight to fd 2) are dropped."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    except rasterio.errors.RasterioError as err:
        raise WriteError(f"cannot write {out}: GDAL: {' '.join(str(err).split())}; nothing was replaced") from None
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _verify_raster(tmp: str, out: Path) -> None:
    """Read every block back: GDAL reports some failed writes (e.g. when flushing at close) only as a log line."""
    try:
        with _write_errors(out), rasterio.open(tmp) as written:
            for _, window in written.block_windows(1):
                written.read(1, window=window)
    except WriteError:
        raise WriteError(f"cannot write {out}: the written file does not read back as a GeoTIFF (full disk or "
                         "I/O error); nothing was replaced") from None


def geotiff_overlay(job: Job, prediction: Path, bands: list[int], stretch: Stretch | None,
                    palette: list[list[int]]) -> Path:
    """A downsampled RGB overlay PNG (longest side at most ``OVERLAY_SIDE``) from overview reads."""
    with _raster_errors(job.source), rasterio.open(job.source) as src, rasterio.open(prediction) as pred:
        shape = _overview_shape(src.height, src.width, OVERLAY_SIDE)
        data, valid = _read(src, bands, out_shape=(len(bands), *shape))
        classes = pred.read(1, out_shape=shape)
    rgb = to_rgb(data, nodata_pixels(valid), stretch)
    return write_png(job.output("overlay", ".png"), Image.fromarray(overlay(rgb, classes, palette)))
