"""CLI: validate every argument and input first, then predict input by input with progress on stderr."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..util.errors import UserError
from .geotiff import check_geotiffs, geotiff_overlay, predict_geotiff
from .images import predict_image
from .inputs import Job, collect_jobs, parse_bands
from .model import Predictor, load_predictor


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
        return predict_image(predictor, job, args.overlay, progress, bands)
    path, stretch, used = predict_geotiff(predictor, job, bands, args.tile, progress)
    if not args.overlay:
        return [path]
    return [path, geotiff_overlay(job, path, used, stretch, predictor.spec.palette)]


def predict_cli(args: argparse.Namespace) -> None:
    """Validate every argument and input first, then predict input by input."""
    if args.tile < 1 or args.batch_size < 1:
        raise UserError(f"--tile ({args.tile}) and --batch-size ({args.batch_size}) must be positive")
    jobs = collect_jobs(args.inputs, args.out)
    predictor = load_predictor(args)  # a saved run or an ONNX export: both carry the spec and its radiometry
    bands = parse_bands(args.bands, predictor.channels)  # one band per channel the model reads
    radiometry = predictor.spec.radiometry
    check_geotiffs(jobs, bands, None if radiometry is None or radiometry.get("bands") is None
                   else list(radiometry["bands"]))
    with torch.inference_mode(), _progress() as progress:
        for job in jobs:
            for path in _predict_job(predictor, job, args, bands, progress):
                _report(progress, path)
