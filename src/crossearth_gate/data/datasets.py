"""Reading and validating image/mask files, so a bad file fails with its name instead of a silent NaN."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError
from torch.utils.data import Dataset

from crossearth_gate.data.catalog import DatasetInfo, DomainSpec, Pair, list_pairs
from crossearth_gate.data.transforms import Reader
from crossearth_gate.util.errors import UserError
from crossearth_gate.util.labels import IGNORE_INDEX

Transform = Callable[[np.ndarray, np.ndarray | None], tuple[torch.Tensor, torch.Tensor | None]]
Arrays = tuple[np.ndarray, np.ndarray | None]


def _load(path: Path) -> Image.Image:
    """Decode the whole file now, so truncation surfaces here rather than as grey pixels later."""
    # PIL's leniency pads a truncated file with grey; someone may have switched it on globally.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(path) as im:
            im.load()
            return im
    except FileNotFoundError:
        raise UserError(f"file not found: {path}") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise UserError(f"cannot read {path}: {reason}") from None


def read_image(path: str | Path) -> np.ndarray:
    """Read an RGB image as HxWx3 uint8; other band counts are refused rather than guessed at."""
    im = _load(Path(path))
    bands = len(im.getbands())
    if bands != 3:
        raise UserError(f"{path}: expected 3 bands, found {bands} (PIL mode {im.mode}; RGB is needed)")
    return np.array(im.convert("RGB"), dtype=np.uint8)


def read_mask(path: str | Path, info: DatasetInfo) -> np.ndarray:
    """Read a mask as HxW uint8 class indices in [0, num_classes) with 255 = ignore."""
    path = Path(path)
    im = _load(path)
    if info.label_format == "colour":
        return _colour_to_label(np.array(im.convert("RGB")), path, info)
    bands = len(im.getbands())
    if bands != 1:
        raise UserError(f"{path}: expected a 1-band label mask, found {bands} bands (PIL mode {im.mode})")
    return _check_labels(np.array(im).astype(np.int64), path, info)


def _ranges(values: list[int]) -> str:
    """[1, 2, 3, 5] → "1..3, 5"."""
    runs: list[list[int]] = []
    for value in sorted(values):
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in runs)


def _check_labels(raw: np.ndarray, path: Path | str, info: DatasetInfo) -> np.ndarray:
    """Stored values → class indices through the definition's value map; 255 and `ignore` → IGNORE_INDEX."""
    table = {**{v: IGNORE_INDEX for v in info.ignored}, IGNORE_INDEX: IGNORE_INDEX, **info.value_to_label}
    keys = np.array(sorted(table), dtype=np.int64)
    labels = np.array([table[k] for k in sorted(table)], dtype=np.uint8)
    flat = raw.astype(np.int64)
    idx = np.searchsorted(keys, flat).clip(max=len(keys) - 1)
    hit = keys[idx] == flat
    if not hit.all():
        bad = ", ".join(str(v) for v in np.unique(raw[~hit])[:10])
        ignored = "".join(f", {v} = ignore" for v in info.ignored if v != IGNORE_INDEX)
        always = "" if IGNORE_INDEX in info.value_to_label else ", 255"
        allowed = f"{_ranges(list(info.value_to_label))}{always}{ignored}"
        raise UserError(f"{path}: label values {bad} out of range for {info.name!r} (allowed {allowed})")
    return labels[idx]


def decode_label(raw: np.ndarray, path: Path | str, info: DatasetInfo) -> np.ndarray:
    """A raw label array (HxW values or HxWx3 colours) → HxW uint8 class indices, 255 = ignore."""
    if info.label_format == "colour":
        if raw.ndim != 3 or raw.shape[-1] != 3:
            raise UserError(f"{path}: colour labels need 3 bands")
        return _colour_to_label(raw.astype(np.uint8), Path(str(path)), info)
    if raw.ndim != 2:
        raise UserError(f"{path}: expected a 1-band label mask, found {raw.shape[-1]} bands")
    return _check_labels(raw, path, info)


def fit_within(image: np.ndarray, mask: np.ndarray | None, size: int) -> Arrays:
    """Shrink so the longer side is ``size``, keeping the aspect ratio (mmseg's keep-ratio ``Resize`` to a
    square scale): a release whose benchmark shrinks its images this way is read at that resolution. Smaller
    images stay as they are; masks take the nearest label, so ids never blend."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    if scale >= 1:
        return image, mask
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = np.asarray(Image.fromarray(image).resize(new_size, Image.Resampling.BILINEAR))
    if mask is not None:
        mask = np.asarray(Image.fromarray(mask).resize(new_size, Image.Resampling.NEAREST))
    return image, mask


def _colour_to_label(rgb: np.ndarray, path: Path, info: DatasetInfo) -> np.ndarray:
    codes = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    known = sorted(((r << 16) | (g << 8) | b, label) for (r, g, b), label in info.colour_to_label.items())
    keys = np.array([k for k, _ in known], dtype=np.uint32)
    values = np.array([v for _, v in known], dtype=np.uint8)
    idx = np.searchsorted(keys, codes).clip(max=len(keys) - 1)
    hit = keys[idx] == codes
    if not hit.all():
        unknown = ", ".join(f"#{c:06X}" for c in np.unique(codes[~hit])[:5])
        raise UserError(f"{path}: unknown mask colour(s) {unknown} for dataset {info.name!r}")
    return values[idx]


class SegmentationDataset(Dataset):
    """(image, mask) pairs of one domain; validates each file as it is read and can keep it in memory."""

    def __init__(
        self,
        pairs: Sequence[Pair],
        info: DatasetInfo,
        transform: Transform,
        labelled: bool = True,
        cache: bool = False,
        scenes: Sequence[Reader] | None = None,
        min_length: int = 0,
    ) -> None:
        """``min_length``: random crops per epoch at least, the pairs taken in turn (index modulo their number):
        a training domain of one large scene still fills every batch with independent crops."""
        self.pairs = list(pairs)
        self.min_length = min_length
        # Rasters: one window reader per pair (paths and numbers only, so still picklable), never cached.
        self.scenes = None if scenes is None else list(scenes)
        self.info = info
        self.transform = transform
        self.labelled = labelled
        # A plain dict of arrays keeps the dataset picklable for DataLoader workers.
        self._cache: dict[int, Arrays] | None = {} if cache else None
        unlabelled = [image for image, mask in self.pairs if mask is None]
        if labelled and unlabelled:
            raise UserError(f"image {unlabelled[0]} has no mask but its dataset is used with labels")

    @classmethod
    def from_spec(
        cls, spec: DomainSpec, transform: Transform, labelled: bool = True, cache: bool = False
    ) -> SegmentationDataset:
        return cls(list_pairs(spec, labelled), spec.info, transform, labelled, cache)

    def __len__(self) -> int:
        return max(len(self.pairs), self.min_length)

    def arrays(self, index: int) -> Arrays:
        """Decoded, validated uint8 image (HxWx3) and mask (HxW, None when unlabelled)."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        image_path, mask_path = self.pairs[index]
        image = read_image(image_path)
        mask = None
        if self.labelled:
            assert mask_path is not None
            mask = read_mask(mask_path, self.info)
            if mask.shape != image.shape[:2]:
                (h, w), (mh, mw) = image.shape[:2], mask.shape
                raise UserError(f"image {image_path} is {w}x{h} but its mask {mask_path} is {mw}x{mh}")
        if self.info.fit_size is not None:
            image, mask = fit_within(image, mask, self.info.fit_size)
        if self._cache is not None:
            self._cache[index] = (image, mask)
        return image, mask

    def preload(self) -> None:
        """Read (and so validate) every sample now, before workers fork, so bad files fail at setup."""
        if self.scenes is not None:
            return  # checked when their scenes were opened; read window by window
        for index in range(len(self.pairs)):
            self.arrays(index)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        index %= len(self.pairs)
        if self.scenes is not None:
            image_t, mask_t = self.transform.from_reader(self.scenes[index])  # type: ignore[attr-defined]
        else:
            image, mask = self.arrays(index)
            image_t, mask_t = self.transform(image, mask)
        sample: dict[str, torch.Tensor | str] = {"image": image_t, "path": str(self.pairs[index][0])}
        if mask_t is not None:
            sample["mask"] = mask_t
        return sample
