"""Inputs: files and folders expanded into jobs, and the --bands choice checked against each file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..util.errors import UserError

PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg")
GEOTIFF_SUFFIXES = (".tif", ".tiff")
SUFFIXES = PLAIN_SUFFIXES + GEOTIFF_SUFFIXES


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
        if path.is_dir() and path.resolve() == out.resolve():
            raise UserError(f"--out {out} is the input folder {path}: predictions would mix with the images; "
                            "give another output folder")
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
    _refuse_overwriting_inputs(jobs)
    return jobs


def _refuse_overwriting_inputs(jobs: list[Job]) -> None:
    """No prediction or overlay may land on an input (``a.png`` and ``a_pred.png`` predicted into their folder)."""
    sources = {job.source.resolve(): job.source for job in jobs}
    for job in jobs:
        for output in (job.output("pred", ".png"), job.output("pred", ".tif"), job.output("overlay", ".png")):
            if output.resolve() in sources:
                raise UserError(f"the output of {job.source} would overwrite the input {output}: give another --out")


COUNTS = {3: "three", 4: "four", 5: "five", 6: "six"}


def parse_bands(text: str | None, channels: int = 3) -> list[int] | None:
    """``"3,2,1"`` → [3, 2, 1]: one 1-based band number per channel the model reads, repeats allowed."""
    if text is None:
        return None
    try:
        bands = [int(part) for part in text.split(",")]
    except ValueError:
        bands = []
    if len(bands) != channels or min(bands) < 1:
        example = "3,2,1 or 1,1,1" if channels == 3 else ",".join(str(b) for b in range(1, channels + 1))
        raise UserError(f"--bands {text!r}: expected {COUNTS.get(channels, channels)} comma-separated 1-based band "
                        f"numbers (the model reads {channels} channels), e.g. {example}")
    return bands


def resolve_bands(bands: list[int] | None, count: int, path: Path, trained: list[int] | None = None) -> list[int]:
    """The bands to read as R, G, B: --bands checked against the file, else the bands the model was trained
    on (``trained``), else 1,2,3 when there are three."""
    if bands is None and trained is not None:
        if max(trained) > count:
            raise UserError(f"{path}: the model was trained on bands {trained} but the file has {count} band(s); "
                            "choose others with --bands")
        return list(trained)
    if bands is None:
        if count < 3:
            raise UserError(f"{path}: has {count} band(s), not RGB; pass --bands 1,1,1 to use band 1 as grey")
        return [1, 2, 3]
    if max(bands) > count:
        raise UserError(f"{path}: --bands asks for band {max(bands)} but the file has {count} band(s)")
    return bands


def check_plain_bands(path: Path, bands: list[int] | None) -> None:
    """--bands on a JPEG/PNG: its bands must exist (a band the file does not have is one line, not ignored)."""
    if bands is None:
        return
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            count = len(im.getbands())
    except (OSError, UnidentifiedImageError):
        return  # the reader names the unreadable file
    if max(bands) > count:
        raise UserError(f"{path}: --bands asks for band {max(bands)} but the file has {count} band(s)")
