"""Joint image/mask transforms: each geometric step hits both arrays, so labels stay on their pixels.

Randomness comes from torch's global RNG, which DataLoader seeds per worker; classes hold only numbers
so they pickle into workers.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from crossearth_gate.data.radiometry import IMAGENET_MEAN, IMAGENET_STD, Radiometry, imagenet
from crossearth_gate.util.errors import UserError
from crossearth_gate.util.labels import IGNORE_INDEX

Stats = tuple[float, ...]
Tensors = tuple[torch.Tensor, torch.Tensor | None]
MAX_DRAWS = 10  # a crop below the valid share is drawn again at most this often (then kept)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ArrayReader", "EvalTransform", "Reader", "TrainTransform"]


class Reader(Protocol):
    """A scene that crops are read from: its size, and a raw window with its labels."""

    shape: tuple[int, int]

    def read(self, y0: int, y1: int, x0: int, x1: int) -> tuple[torch.Tensor, np.ndarray | None, float]:
        """(C, h, w) float raw values (nodata filled), uint8 labels (nodata = ignore) and the valid share."""
        ...


def as_tensor(window: np.ndarray, full_width: bool) -> torch.Tensor:
    """HxWxC window → (C, h, w) float in the memory layout a slice of the whole HxWxC array gets.

    Rows of full width are one dense block (channels-last strides survive ``float()``); narrower
    windows are not, and come out contiguous. Resampling may round differently per layout, so rasters
    read window by window take the layout the in-memory path takes, and give the same bits.
    """
    image = torch.from_numpy(window).permute(2, 0, 1)
    return image.float() if full_width else image.contiguous().float()


class ArrayReader:
    """A decoded HxWxC image (and mask) in memory: the path JPEG/PNG datasets have always taken."""

    def __init__(self, image: np.ndarray, mask: np.ndarray | None) -> None:
        self.image, self.mask = image, mask
        self.shape = (int(image.shape[0]), int(image.shape[1]))

    def read(self, y0: int, y1: int, x0: int, x1: int) -> tuple[torch.Tensor, np.ndarray | None, float]:
        image = torch.from_numpy(self.image[y0:y1, x0:x1]).permute(2, 0, 1).float()
        return image, None if self.mask is None else self.mask[y0:y1, x0:x1], 1.0


def _radiometry(radiometry: Radiometry | None, mean: Stats, std: Stats) -> Radiometry:
    return radiometry if radiometry is not None else imagenet(mean, std)


class EvalTransform:
    """Whole image at its own size, normalised only: evaluation must see every pixel once."""

    def __init__(self, mean: Stats = IMAGENET_MEAN, std: Stats = IMAGENET_STD,
                 radiometry: Radiometry | None = None) -> None:
        self.radiometry = _radiometry(radiometry, mean, std)
        self.mean, self.std = self.radiometry.mean, self.radiometry.std

    def __call__(self, image: np.ndarray, mask: np.ndarray | None) -> Tensors:
        return self.scene(ArrayReader(image, mask))

    def from_reader(self, reader: Reader) -> Tensors:
        return self.scene(reader)

    def scene(self, reader: Reader) -> Tensors:
        height, width = reader.shape
        image_t, mask, _ = reader.read(0, height, 0, width)
        return self.radiometry.normalise(image_t), None if mask is None else torch.from_numpy(mask).long()


class TrainTransform:
    """Random rescale, pad, crop, flips and 90-degree turns, then normalise.

    Only the source window that lands in the crop is resampled: the same distribution as rescaling the
    whole image first, without resizing a 2000-pixel tile to 4000 pixels for a 224-pixel crop.
    """

    def __init__(
        self,
        crop_size: int,
        scale_range: tuple[float, float] = (0.5, 2.0),
        hflip: bool = True,
        vflip: bool = True,
        rot90: bool = True,
        mean: Stats = IMAGENET_MEAN,
        std: Stats = IMAGENET_STD,
        radiometry: Radiometry | None = None,
        min_valid: float = 0.0,
    ) -> None:
        low, high = scale_range
        if crop_size < 1 or not 0 < low <= high:
            raise UserError(f"need crop_size >= 1 and 0 < min <= max scale, got {crop_size}, {scale_range}")
        self.crop_size = int(crop_size)
        self.scale_range = (float(low), float(high))
        self.hflip, self.vflip, self.rot90 = hflip, vflip, rot90
        self.radiometry = _radiometry(radiometry, mean, std)
        self.mean, self.std = self.radiometry.mean, self.radiometry.std
        self.min_valid = float(min_valid)

    def _window(self, size: int, scale: float) -> tuple[int, int, int]:
        """Source span [start, stop) along one axis and its length after rescaling (at most crop)."""
        span = max(1, round(self.crop_size / scale))
        if span >= size:
            return 0, size, min(self.crop_size, max(1, round(size * scale)))
        start = int(torch.randint(size - span + 1, ()))
        return start, start + span, self.crop_size

    def __call__(self, image: np.ndarray, mask: np.ndarray | None) -> Tensors:
        return self.crop(ArrayReader(image, mask))

    def _draw(self, reader: Reader) -> tuple[torch.Tensor, np.ndarray | None, tuple[int, int]]:
        """One scale and window; drawn again (from the same seeded stream) while mostly nodata."""
        height, width = reader.shape
        for _ in range(MAX_DRAWS):
            low, high = self.scale_range
            scale = low + (high - low) * float(torch.rand(()))
            y0, y1, out_h = self._window(height, scale)
            x0, x1, out_w = self._window(width, scale)
            image_t, mask, valid = reader.read(y0, y1, x0, x1)
            if valid >= self.min_valid:
                break
        return image_t, mask, (out_h, out_w)

    def from_reader(self, reader: Reader) -> Tensors:
        return self.crop(reader)

    def crop(self, reader: Reader) -> Tensors:
        image_t, mask, size = self._draw(reader)
        out_h, out_w = size
        image_t = F.interpolate(image_t[None], size, mode="bilinear", align_corners=False, antialias=True)[0]
        pad = (0, self.crop_size - out_w, 0, self.crop_size - out_h)
        image_t = F.pad(image_t, pad, value=0.0)
        mask_t = None
        if mask is not None:
            mask_t = torch.from_numpy(np.ascontiguousarray(mask)).float()[None, None]
            mask_t = F.interpolate(mask_t, size, mode="nearest-exact")[0, 0]
            mask_t = F.pad(mask_t, pad, value=float(IGNORE_INDEX)).long()
        for enabled, dim in ((self.hflip, -1), (self.vflip, -2)):
            if enabled and float(torch.rand(())) < 0.5:
                image_t = image_t.flip(dim)
                mask_t = None if mask_t is None else mask_t.flip(dim)
        if self.rot90:
            turns = int(torch.randint(4, ()))
            image_t = torch.rot90(image_t, turns, (-2, -1))
            mask_t = None if mask_t is None else torch.rot90(mask_t, turns, (-2, -1))
        return self.radiometry.normalise(image_t), mask_t
