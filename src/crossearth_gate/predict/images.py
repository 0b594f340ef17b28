"""Plain images: whole-image prediction written as palette PNGs of class indices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import Progress

from ..data.datasets import read_image
from ..runs.plots import overlay
from ..util.atomic import atomic_write
from .inputs import Job
from .model import Predictor


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
