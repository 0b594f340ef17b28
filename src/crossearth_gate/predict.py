"""``crossearth-gate predict``: segment plain images, folders and GeoTIFF scenes with a trained model.

Plain images (.png/.jpg/.jpeg) are read whole and written as palette PNGs of class indices.
Every .tif/.tiff goes through rasterio instead, tile by tile (`iter_tiles`), so a scene of any size
needs only one tile plus its context margin in memory; each tile runs exactly its share of the
whole-scene window grid, so the result does not depend on --tile. The output GeoTIFF keeps the
scene's CRS, transform and size, with 255 = nodata and the class palette as colour table.

Radiometry: the model was trained on 8-bit RGB. uint8 bands are used as they are; any other dtype
is scaled per band by a 2-98 % percentile stretch to 0..255. The percentiles are computed ONCE per
scene from a decimated overview read (at most ``STATS_SIDE`` pixels a side, nodata excluded), so
every tile is scaled identically and tile seams cannot come from per-tile statistics.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
import rasterio.windows
import torch
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .artefacts import ModelSpec, load_trainable
from .atomic import atomic_write
from .data.datasets import read_image
from .data.transforms import EvalTransform
from .errors import UserError
from .inference import Tile, Window, iter_tiles, sliding_window_logits_at, window_starts
from .merge import merge_for_inference
from .plots import overlay
from .segmentor import Segmentor

PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg")
GEOTIFF_SUFFIXES = (".tif", ".tiff")
SUFFIXES = PLAIN_SUFFIXES + GEOTIFF_SUFFIXES
NODATA = 255
STRETCH_PERCENTILES = (2.0, 98.0)
STATS_SIDE = 1024
OVERLAY_SIDE = 2048
BLOCK = 256

Advance = Callable[[int], None]


# ----------------------------------------------------------------------------- model


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

    def classify(self, rgb: np.ndarray, row_starts: Sequence[int], col_starts: Sequence[int],
                 advance: Advance) -> np.ndarray:
        """HxWx3 uint8 → HxW uint8 class indices from the given windows, normalised exactly as in evaluation."""
        image, _ = EvalTransform(tuple(self.spec.mean), tuple(self.spec.std))(rgb, None)

        def forward(batch: torch.Tensor) -> torch.Tensor:
            logits = self.model(batch)
            advance(len(batch))
            return logits

        logits = sliding_window_logits_at(forward, image.to(self.device), self.window, row_starts, col_starts,
                                          len(self.spec.classes), self.batch_size)
        return logits.argmax(0).to(torch.uint8).cpu().numpy()


def model_file(path: Path) -> Path:
    return path / "trainable.safetensors" if path.is_dir() else path


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


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Job:
    """One input file and the folder its outputs go to (folders are mirrored below --out)."""

    source: Path
    out_dir: Path

    @property
    def is_geotiff(self) -> bool:
        return self.source.suffix.lower() in GEOTIFF_SUFFIXES

    def output(self, kind: str, suffix: str) -> Path:
        return self.out_dir / f"{self.source.stem}_{kind}{suffix}"


def _folder_jobs(folder: Path, out: Path) -> list[Job]:
    """Every supported image below ``folder``, skipping earlier outputs if --out lies inside it."""
    resolved_out = out.resolve()
    files = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in SUFFIXES and not p.resolve().is_relative_to(resolved_out)
    )
    if not files:
        raise UserError(f"{folder}: no {', '.join(SUFFIXES)} files in this folder")
    return [Job(p, out / p.parent.relative_to(folder)) for p in files]


def collect_jobs(inputs: list[Path], out: Path) -> list[Job]:
    """Expand folders, refuse missing or unsupported inputs and inputs whose outputs would collide."""
    jobs: list[Job] = []
    for path in inputs:
        if path.is_dir():
            jobs.extend(_folder_jobs(path, out))
        elif not path.exists():
            raise UserError(f"{path}: input not found")
        elif path.suffix.lower() not in SUFFIXES:
            raise UserError(f"{path}: unsupported input type (use {', '.join(SUFFIXES)})")
        else:
            jobs.append(Job(path, out))
    seen: dict[Path, Path] = {}
    for job in jobs:
        key = job.output("pred", "")
        if key in seen:
            raise UserError(f"{seen[key]} and {job.source} would write the same output {key}_pred.*")
        seen[key] = job.source
    return jobs


def parse_bands(text: str | None) -> list[int] | None:
    """``"3,2,1"`` → [3, 2, 1]: exactly three 1-based band numbers, repeats allowed."""
    if text is None:
        return None
    try:
        bands = [int(part) for part in text.split(",")]
    except ValueError:
        bands = []
    if len(bands) != 3 or min(bands) < 1:
        raise UserError(f"--bands {text!r}: expected three comma-separated 1-based band numbers, e.g. 3,2,1 or 1,1,1")
    return bands


def resolve_bands(bands: list[int] | None, count: int, path: Path) -> list[int]:
    """The bands to read as R, G, B: --bands checked against the file, else 1,2,3 when there are three."""
    if bands is None:
        if count < 3:
            raise UserError(f"{path}: has {count} band(s), not RGB; pass --bands 1,1,1 to use band 1 as grey")
        return [1, 2, 3]
    if max(bands) > count:
        raise UserError(f"{path}: --bands asks for band {max(bands)} but the file has {count} band(s)")
    return bands


# ----------------------------------------------------------------------------- radiometry


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


# ----------------------------------------------------------------------------- GeoTIFFs


def check_geotiffs(jobs: list[Job], bands: list[int] | None) -> None:
    """Open every GeoTIFF and check its bands now, before the (possibly slow) model load."""
    for job in jobs:
        if job.is_geotiff:
            with _raster_errors(job.source), rasterio.open(job.source) as src:
                resolve_bands(bands, src.count, job.source)


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
    data, valid = _read(src, bands, window=_rio_window(tile.read))
    nodata = nodata_pixels(valid)
    if nodata.all():
        advance(len(tile.row_starts) * len(tile.col_starts))
        classes = np.full(nodata.shape, NODATA, dtype=np.uint8)
    else:
        classes = predictor.classify(to_rgb(data, nodata, stretch), tile.row_starts, tile.col_starts, advance)
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
        bands = resolve_bands(bands_arg, src.count, job.source)
        stretch = scene_stretch(src, bands)
        tiles = list(iter_tiles(src.height, src.width, tile_size, predictor.window, predictor.stride))
        total = sum(len(t.row_starts) * len(t.col_starts) for t in tiles)
        task = progress.add_task(job.source.name, total=total)

        def advance(n: int) -> None:
            progress.advance(task, n)

        def write(tmp: str) -> None:
            with rasterio.open(tmp, "w", **_output_profile(src)) as dst:
                for tile in tiles:
                    core = _predict_tile(predictor, src, bands, tile, stretch, advance)
                    dst.write(core, 1, window=_rio_window(tile.write))
                dst.write_colormap(1, _colormap(predictor.spec.palette))

        path = atomic_write(job.output("pred", ".tif"), write)
    return path, stretch, bands


def geotiff_overlay(job: Job, prediction: Path, bands: list[int], stretch: Stretch | None,
                    palette: list[list[int]]) -> Path:
    """A downsampled RGB overlay PNG (longest side at most ``OVERLAY_SIDE``) from overview reads."""
    with _raster_errors(job.source), rasterio.open(job.source) as src, rasterio.open(prediction) as pred:
        shape = _overview_shape(src.height, src.width, OVERLAY_SIDE)
        data, valid = _read(src, bands, out_shape=(len(bands), *shape))
        classes = pred.read(1, out_shape=shape)
    rgb = to_rgb(data, nodata_pixels(valid), stretch)
    return write_png(job.output("overlay", ".png"), Image.fromarray(overlay(rgb, classes, palette)))


# ----------------------------------------------------------------------------- plain images


def write_png(path: Path, image: Image.Image) -> Path:
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def palette_image(classes: np.ndarray, palette: list[list[int]]) -> Image.Image:
    """Mode "P" image: the indices stay exact while any viewer shows the class colours."""
    image = Image.fromarray(classes)
    image.putpalette([c for rgb in palette for c in rgb])  # turns the "L" image into "P", indices kept
    return image


def predict_image(predictor: Predictor, job: Job, with_overlay: bool, progress: Progress) -> list[Path]:
    rgb = read_image(job.source)
    rows, cols = predictor.grid(*rgb.shape[:2])
    task = progress.add_task(job.source.name, total=len(rows) * len(cols))
    classes = predictor.classify(rgb, rows, cols, lambda n: progress.advance(task, n))
    palette = predictor.spec.palette
    written = [write_png(job.output("pred", ".png"), palette_image(classes, palette))]
    if with_overlay:
        written.append(write_png(job.output("overlay", ".png"), Image.fromarray(overlay(rgb, classes, palette))))
    return written


# ----------------------------------------------------------------------------- CLI


def _progress() -> Progress:
    """Progress over forward windows on stderr; stdout keeps one line per written file."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("windows"),
                    TimeRemainingColumn(), console=Console(stderr=True), redirect_stdout=False)


def _report(progress: Progress, path: Path) -> None:
    """One unwrapped line per output on stdout (scriptable); above the bar when both share a terminal."""
    if progress.console.is_terminal and sys.stdout.isatty():
        progress.console.print(f"wrote {path}", soft_wrap=True, markup=False, highlight=False)
    else:
        print(f"wrote {path}", flush=True)


def _predict_job(predictor: Predictor, job: Job, args: argparse.Namespace, bands: list[int] | None,
                 progress: Progress) -> list[Path]:
    if not job.is_geotiff:
        return predict_image(predictor, job, args.overlay, progress)
    path, stretch, used = predict_geotiff(predictor, job, bands, args.tile, progress)
    if not args.overlay:
        return [path]
    return [path, geotiff_overlay(job, path, used, stretch, predictor.spec.palette)]


def predict_cli(args: argparse.Namespace) -> None:
    """Validate every argument and input first, then predict input by input."""
    bands = parse_bands(args.bands)
    if args.tile < 1 or args.batch_size < 1:
        raise UserError(f"--tile ({args.tile}) and --batch-size ({args.batch_size}) must be positive")
    jobs = collect_jobs(args.inputs, args.out)
    check_geotiffs(jobs, bands)
    predictor = load_predictor(args)
    with torch.inference_mode(), _progress() as progress:
        for job in jobs:
            for path in _predict_job(predictor, job, args, bands, progress):
                _report(progress, path)
