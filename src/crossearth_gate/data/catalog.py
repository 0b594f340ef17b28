"""Named datasets and their on-disk layouts, so configs can say `dataset: vaihingen` and nothing more."""

from __future__ import annotations

import glob as globbing
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from crossearth_gate.data.definition import RGB, DatasetDef, DatasetInfo, LabelDef
from crossearth_gate.data.layouts import casid_folders, rescuenet_folders
from crossearth_gate.data.raster import is_remote
from crossearth_gate.util.cache import cache_dir
from crossearth_gate.util.errors import UserError
from crossearth_gate.util.labels import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "RGB", "DatasetDef", "DatasetInfo", "DomainSpec", "LabelDef", "list_pairs"]
log = logging.getLogger(__name__)

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


def _hex(colour: RGB) -> str:
    return "#{:02X}{:02X}{:02X}".format(*colour)


def _palette(colours: tuple[RGB, ...]) -> list[list[int]]:
    return [list(c) for c in colours]


def _reduced(classes: tuple[str, ...]) -> LabelDef:
    """mmseg's reduce_zero_label written as a value map: 0 is ignored, class k is stored as k + 1."""
    return LabelDef("{stem}.png", {i + 1: c for i, c in enumerate(classes)}, ignore=["0"])


def _mmseg(name: str, classes: tuple[str, ...], palette: tuple[RGB, ...]) -> DatasetDef:
    return DatasetDef(list(classes), name, _palette(palette), "*.png", labels=_reduced(classes), layout="mmseg")


# The named datasets: presets in the same form a user's YAML gives (docs/own-data.md), one code path.
PRESETS: dict[str, DatasetDef] = {
    "potsdam": _mmseg("potsdam", ISPRS_CLASSES, ISPRS_PALETTE),
    "potsdam_irrg": _mmseg("potsdam_irrg", ISPRS_CLASSES, ISPRS_PALETTE),
    "vaihingen": _mmseg("vaihingen", ISPRS_CLASSES, ISPRS_PALETTE),
    "loveda_urban": _mmseg("loveda_urban", LOVEDA_CLASSES, LOVEDA_PALETTE),
    "loveda_rural": _mmseg("loveda_rural", LOVEDA_CLASSES, LOVEDA_PALETTE),
    "dubai": DatasetDef(
        list(DUBAI_CLASSES), "dubai", _palette(DUBAI_PALETTE), "*.jpg", layout="dubai",
        labels=LabelDef("{stem}.png", colours={_hex(c): n for c, n in zip(DUBAI_PALETTE, DUBAI_CLASSES, strict=True)},
                        ignore=[_hex(c) for c in DUBAI_IGNORED]),
    ),
    "casid": DatasetDef(list(CASID_CLASSES), "casid", _palette(CASID_PALETTE), "*.png", layout="casid",
                        labels=LabelDef("{stem}-label.png")),
    # CrossEarth's RescueNet pipelines shrink the 4000 x 3000 drone images to fit 512 x 512 (near Potsdam's GSD)
    "rescuenet": DatasetDef(list(RESCUE_CLASSES), "rescuenet", _palette(RESCUE_PALETTE), "*.jpg", layout="rescuenet",
                            labels=LabelDef("{stem}_lab.png", {i + 1: c for i, c in enumerate(RESCUE_CLASSES)},
                                            ignore=["0"]), fit_size=512),
    "potsdam_rescue": _mmseg("potsdam_rescue", RESCUE_CLASSES, RESCUE_PALETTE),
    "potsdam_rescue_irrg": _mmseg("potsdam_rescue_irrg", RESCUE_CLASSES, RESCUE_PALETTE),
}
DATASETS: dict[str, DatasetInfo] = {name: preset.resolve() for name, preset in PRESETS.items()}


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
class RegionSpec:
    """Part of each scene: a pixel window [col_off, row_off, width, height] or bounds [left, bottom, right, top]
    in the scene's CRS. One scene then gives disjoint training, validation and test areas."""

    pixels: list[int] | None = None
    bounds: list[float] | None = None


@dataclass
class DomainSpec:
    """One domain as a config gives it: `dataset` (a preset name or a definition), `split` for folder layouts,
    `tiles` for dubai (None = all), `domain` (CASID), `subset` for a seeded part of each folder, `region`."""

    dataset: DatasetDef | str
    root: str
    split: str | None = None
    tiles: list[int] | None = None
    domain: str | None = None
    subset: Subset | None = None
    region: RegionSpec | None = None

    @property
    def info(self) -> DatasetInfo:
        if isinstance(self.dataset, DatasetDef):
            return self.dataset.resolve()
        return get_dataset_info(self.dataset)

    @property
    def name(self) -> str:
        return self.dataset.name if isinstance(self.dataset, DatasetDef) else self.dataset


Pair = tuple[Path, Path | None]


def _as_path(text: str, base: Path) -> Path:
    """A list entry: absolute, remote (``/vsicurl/...``, kept as GDAL writes it) or relative to ``base``."""
    return Path(text) if is_remote(text) or Path(text).is_absolute() else base / text


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
    elif info.layout == "files":
        return _files_pairs(spec, info, labelled)
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


def _label_of(image: Path, root: Path, info: DatasetInfo, split: str) -> Path:
    folder = image.parent.relative_to(root) if image.is_relative_to(root) else image.parent
    name = info.label_pattern.format(stem=image.stem, name=image.name, suffix=image.suffix, dir=folder, split=split)
    return _as_path(name.removeprefix("./").lstrip("/") if str(folder) == "." else name, root)


def _listed(spec: DomainSpec, info: DatasetInfo) -> list[Pair]:
    assert info.image_list is not None
    path = _as_path(info.image_list, Path(spec.root))
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise UserError(f"image list {path}: cannot read ({err.strerror or err})") from None
    pairs: list[Pair] = []
    for number, line in enumerate(lines, 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) > 2:
            raise UserError(f"{path}:{number}: expected 'image' or 'image label', got {line!r}")
        pairs.append((_as_path(parts[0], path.parent), _as_path(parts[1], path.parent) if len(parts) == 2 else None))
    if not pairs:
        raise UserError(f"image list {path} names no image")
    return pairs


def _files_pairs(spec: DomainSpec, info: DatasetInfo, labelled: bool) -> list[Pair]:
    """Images from a glob (or a list file) under the root; labels by ``labels.pattern``; strays named."""
    root = Path(spec.root)
    split = spec.split or ""
    if info.image_list is not None:
        listed = _listed(spec, info)
    else:
        pattern = info.images.format(split=split)
        if is_remote(pattern):
            found = [Path(pattern)]
        else:
            if not root.is_dir():
                raise UserError(f"dataset folder not found: {root}")
            found = sorted(Path(p) for p in globbing.glob(str(root / pattern)) if Path(p).is_file())
            if not found:
                raise UserError(f"no images match {pattern!r} in {root}")
        listed = [(image, None) for image in found]
    if not labelled:
        return [(image, None) for image, _ in listed]
    if info.polygons is not None:
        return _polygon_pairs(listed, info, root)
    pairs: list[Pair] = []
    for image, label in listed:
        label = label or _label_of(image, root, info, split)
        if not is_remote(label) and not label.is_file():
            _missing(info, f"image {image} has no label (expected {label})")
            continue
        pairs.append((image, label))
    if info.image_list is None:
        _stray_labels(root, info, split, {p[0] for p in listed}, {p[1] for p in pairs})
    return pairs


def _polygon_pairs(listed: list[Pair], info: DatasetInfo, root: Path) -> list[Pair]:
    """Each image with its polygon layer burnt onto its grid (data/vector.py): label rasters of class indices,
    cached by content in the user cache, so every later listing (and every later run) reads them as files."""
    from crossearth_gate.data import vector

    p = info.polygons
    assert p is not None
    spec = replace(p, path=str(_as_path(p.path, root)))
    cache = cache_dir("labels")  # $CEG_CACHE_DIR/labels, else ~/.cache/crossearth-gate/labels
    return [(image, vector.rasterize_labels(spec, info.classes, image, cache)) for image, _ in listed]


def _missing(info: DatasetInfo, message: str) -> None:
    """An image without label or a label without image: an error, or a warning with `missing_labels: warn`."""
    if info.missing_labels == "error":
        raise UserError(message + " (set missing_labels: warn to skip such files)")
    log.warning("%s; skipped", message)


def _stray_labels(root: Path, info: DatasetInfo, split: str, images: set[Path], labels: set[Path | None]) -> None:
    """Files that look like labels (the pattern with any stem) but belong to no image: a mistyped name."""
    folders = {image.parent.relative_to(root) for image in images if image.is_relative_to(root)}
    for folder in sorted(folders):
        fill = {"stem": "*", "name": "*", "suffix": "*", "dir": folder, "split": split}
        pattern = info.label_pattern.format(**fill).replace("**", "*")
        if str(folder) == ".":
            pattern = pattern.removeprefix("./").lstrip("/")
        for candidate in sorted(globbing.glob(str(root / pattern))):
            path = Path(candidate)
            if path.is_file() and path not in labels and path not in images:
                _missing(info, f"label {path} has no image")


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
            _missing(info, f"image {image} has no mask (expected {mask})")
            continue
        pairs.append((image, mask))
    masks = {mask for _, mask in pairs}
    for stray in sorted(p for p in mask_dir.glob(f"*{info.seg_suffix}") if p.is_file() and p not in masks):
        expected = image_dir / (stray.name[: -len(info.seg_suffix)] + info.img_suffix)
        _missing(info, f"label {stray} has no image (expected {expected})")
    return pairs
