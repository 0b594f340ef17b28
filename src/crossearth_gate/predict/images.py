"""Plain images: whole-image prediction written as palette PNGs of class indices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import Progress

from ..data.datasets import read_image
from ..runs.plots import overlay
from ..util.atomic import atomic_write
from ..util.errors import UserError
from .inputs import Job
from .model import Predictor


def write_png(path: Path, image: Image.Image) -> Path:
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def palette_image(classes: np.ndarray, palette: list[list[int]]) -> Image.Image:
    """Mode "P" image: the indices stay exact while any viewer shows the class colours."""
    image = Image.fromarray(classes)
    image.putpalette([c for rgb in palette for c in rgb])  # turns the "L" image into "P", indices kept
    return image


def predict_image(predictor: Predictor, job: Job, with_overlay: bool, progress: Progress,
                  bands: list[int] | None = None) -> list[Path]:
    rgb = read_image(job.source)
    if bands is not None:
        rgb = np.ascontiguousarray(rgb[..., [b - 1 for b in bands]])
    if predictor.radiometry.mode == "statistics":
        raise UserError(f"{job.source}: an 8-bit image, but the model normalises with statistics of its "
                        f"training rasters; predict on rasters like those")
    rows, cols = predictor.grid(*rgb.shape[:2])
    task = progress.add_task(job.source.name, total=len(rows) * len(cols))
    classes = predictor.classify(rgb, rows, cols, lambda n: progress.advance(task, n))
    palette = predictor.spec.palette
    written = [write_png(job.output("pred", ".png"), palette_image(classes, palette))]
    if with_overlay:
        written.append(write_png(job.output("overlay", ".png"), Image.fromarray(overlay(rgb, classes, palette))))
    return written
