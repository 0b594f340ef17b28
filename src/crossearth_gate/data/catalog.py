"""Named datasets and their on-disk layouts, so configs can say `dataset: vaihingen` and nothing more."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from crossearth_gate.data.layouts import casid_folders, rescuenet_folders
from crossearth_gate.util.errors import UserError
from crossearth_gate.util.labels import IGNORE_INDEX

RGB = tuple[int, int, int]

ISPRS_CLASSES = ("impervious_surface", "building", "low_vegetation", "tree", "car", "clutter")
ISPRS_PALETTE: tuple[RGB, ...] = (
    (255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0),
)
LOVEDA_CLASSES = ("background", "building", "road", "water", "barren", "forest", "agriculture")
LOVEDA_PALETTE: tuple[RGB, ...] = (
    (255, 255, 255), (255, 0, 0), (255, 255, 0), (0, 0, 255), (159, 129, 183), (0, 255, 0), (255, 195, 128),
)
# Checked on all 72 real masks; the colours in the dataset's own classes.json are wrong.
DUBAI_CLASSES = ("land", "water", "building", "vegetation", "road")
DUBAI_PALETTE: tuple[RGB, ...] = (
    (0x84, 0x29, 0xF6), (0xE2, 0xA9, 0x29), (0x3C, 0x10, 0x98), (0xFE, 0xDD, 0x3A), (0x6E, 0xC1, 0xE4),
)
DUBAI_IGNORED: tuple[RGB, ...] = ((0x9B, 0x9B, 0x9B), (0, 0, 0))  # unlabeled, black border
# The CrossEarth benchmark releases (docs/datasets.md has every class map).
CASID_CLASSES = ("background", "building", "forest", "road", "water")
CASID_PALETTE: tuple[RGB, ...] = ((0, 0, 0), (255, 255, 0), (85, 255, 0), (255, 0, 0), (0, 112, 255))
# RescueNet and Potsdam relabelled to the classes they share (low vegetation + tree = vegetation).
RESCUE_CLASSES = ("impervious_surface", "building", "vegetation", "car", "clutter")
RESCUE_PALETTE: tuple[RGB, ...] = ((255, 255, 255), (0, 0, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0))


@dataclass(frozen=True)
class DatasetInfo:
    """How one dataset names its classes and stores its images and masks."""

    name: str
    classes: tuple[str, ...]
    palette: tuple[RGB, ...]
    layout: Literal["mmseg", "dubai", "casid", "rescuenet"]
    reduce_zero_label: bool
    label_format: Literal["index", "colour"]
    colour_to_label: dict[RGB, int] = field(default_factory=dict, hash=False)
    img_suffix: str = ".png"
    seg_suffix: str = ".png"
    fit_size: int | None = None  # read images (and masks) rescaled so the longer side is this (None: as stored)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _isprs(name: str) -> DatasetInfo:
    return DatasetInfo(name, ISPRS_CLASSES, ISPRS_PALETTE, "mmseg", True, "index")


def _loveda(name: str) -> DatasetInfo:
    return DatasetInfo(name, LOVEDA_CLASSES, LOVEDA_PALETTE, "mmseg", True, "index")


def _potsdam_rescue(name: str) -> DatasetInfo:
    return DatasetInfo(name, RESCUE_CLASSES, RESCUE_PALETTE, "mmseg", True, "index")


_DUBAI_COLOURS = {c: i for i, c in enumerate(DUBAI_PALETTE)} | {c: IGNORE_INDEX for c in DUBAI_IGNORED}

DATASETS: dict[str, DatasetInfo] = {
    "potsdam": _isprs("potsdam"),
    "potsdam_irrg": _isprs("potsdam_irrg"),
    "vaihingen": _isprs("vaihingen"),
    "loveda_urban": _loveda("loveda_urban"),
    "loveda_rural": _loveda("loveda_rural"),
    "dubai": DatasetInfo(
        "dubai", DUBAI_CLASSES, DUBAI_PALETTE, "dubai", False, "colour", _DUBAI_COLOURS, ".jpg", ".png"
    ),
    "casid": DatasetInfo("casid", CASID_CLASSES, CASID_PALETTE, "casid", False, "index", {}, ".png", "-label.png"),
    # CrossEarth's RescueNet pipelines shrink the 4000 x 3000 drone images to fit 512 x 512 (near Potsdam's GSD)
    "rescuenet": DatasetInfo(
        "rescuenet", RESCUE_CLASSES, RESCUE_PALETTE, "rescuenet", True, "index", {}, ".jpg", "_lab.png", 512
    ),
    "potsdam_rescue": _potsdam_rescue("potsdam_rescue"),
    "potsdam_rescue_irrg": _potsdam_rescue("potsdam_rescue_irrg"),
}


def get_dataset_info(name: str) -> DatasetInfo:
    """Look a dataset up by name; an unknown name is a config mistake, so list the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise UserError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}") from None


def demo_data_root() -> Path:
    """The downscaled Dubai tiles shipped inside the package (see demo_data/ATTRIBUTION.md)."""
    return Path(__file__).resolve().parent.parent / "demo_data" / "dubai"


@dataclass
class Subset:
    """A seeded share of each image folder: `take: part` gets `fraction` of its images, `rest` the others.

    Two specs that differ only in `take` split every folder (e.g. every Dubai tile) into disjoint
    parts, e.g. unlabelled training images and scored test images of the same district.
    """

    fraction: float
    take: Literal["part", "rest"] = "part"
    seed: int = 0

    def apply(self, pairs: list[Pair], folder: Path) -> list[Pair]:
        if not 0 < self.fraction < 1 or self.take not in ("part", "rest"):
            raise UserError(f"subset of {folder}: need 0 < fraction < 1 and take part|rest, got {self}")
        ordered = sorted(pairs, key=lambda p: p[0])
        n_part = min(len(ordered) - 1, max(1, round(len(ordered) * self.fraction)))
        if len(ordered) < 2:
            raise UserError(f"subset of {folder}: 1 image cannot be split into two parts")
        chosen = set(np.random.default_rng(self.seed).permutation(len(ordered))[:n_part].tolist())
        keep = (lambda i: i in chosen) if self.take == "part" else (lambda i: i not in chosen)
        return [p for i, p in enumerate(ordered) if keep(i)]


@dataclass
class DomainSpec:
    """One domain as a config gives it: `split` for folder layouts, `tiles` for dubai (None = all), `domain` (CASID),
    `subset` for a seeded part of each folder."""

    dataset: str
    root: str
    split: str | None = None
    tiles: list[int] | None = None
    domain: str | None = None
    subset: Subset | None = None

    @property
    def info(self) -> DatasetInfo:
        return get_dataset_info(self.dataset)


Pair = tuple[Path, Path | None]


def list_pairs(spec: DomainSpec, labelled: bool = True) -> list[Pair]:
    """Find (image, mask) pairs sorted by image path; masks are None when `labelled` is False."""
    info = spec.info
    root = Path(spec.root)
    if spec.domain is not None and info.layout != "casid":
        raise UserError(f"dataset {info.name!r} has no domains: remove `domain` for {root}")
    if spec.tiles is not None and info.layout != "dubai":
        raise UserError(f"dataset {info.name!r} is not tiled: remove `tiles` for {root}")
    if info.layout == "casid":
        folders = casid_folders(root, spec.split, spec.domain)
    elif info.layout == "rescuenet":
        folders = rescuenet_folders(root, spec.split)
    elif info.layout == "mmseg":
        split = spec.split or ""
        folders = [(root / "img_dir" / split, root / "ann_dir" / split)]
    else:
        if spec.split is not None:
            raise UserError(f"dataset {info.name!r} has no splits: use `tiles` instead of `split` for {root}")
        folders = [(tile / "images", tile / "masks") for tile in _tile_dirs(root, spec.tiles)]
    pairs = []
    for image_dir, mask_dir in folders:
        found = _pairs_in(image_dir, mask_dir, info, labelled)
        pairs += found if spec.subset is None else spec.subset.apply(found, image_dir)
    return sorted(pairs, key=lambda p: p[0])


def _tile_dirs(root: Path, tiles: list[int] | None) -> list[Path]:
    if not root.is_dir():
        raise UserError(f"dataset folder not found: {root}")
    if tiles is None:
        found = sorted(d for d in root.glob("tile_*") if d.is_dir())
        if not found:
            raise UserError(f"no tile_N folders in {root}")
        return found
    if not tiles:
        raise UserError(f"`tiles` is empty for {root}: list tile numbers or leave it out for all tiles")
    return [root / f"tile_{t}" for t in tiles]


def _pairs_in(image_dir: Path, mask_dir: Path, info: DatasetInfo, labelled: bool) -> list[Pair]:
    if not image_dir.is_dir():
        raise UserError(f"image folder not found: {image_dir}")
    images = sorted(p for p in image_dir.glob(f"*{info.img_suffix}") if p.is_file())
    if not images:
        raise UserError(f"no *{info.img_suffix} images in {image_dir}")
    if not labelled:
        return [(p, None) for p in images]
    if not mask_dir.is_dir():
        raise UserError(f"mask folder not found: {mask_dir}")
    pairs: list[Pair] = []
    for image in images:
        mask = mask_dir / (image.name[: -len(info.img_suffix)] + info.seg_suffix)
        if not mask.is_file():
            raise UserError(f"image {image} has no mask (expected {mask})")
        pairs.append((image, mask))
    return pairs
