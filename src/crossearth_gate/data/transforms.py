"""Joint image/mask transforms: each geometric step hits both arrays, so labels stay on their pixels.

Randomness comes from torch's global RNG, which DataLoader seeds per worker; classes hold only numbers
so they pickle into workers.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from crossearth_gate.util.errors import UserError
from crossearth_gate.util.labels import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Stats = tuple[float, float, float]
Tensors = tuple[torch.Tensor, torch.Tensor | None]


def _stats(mean: Stats, std: Stats) -> tuple[Stats, Stats]:
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise UserError(f"mean and std need 3 values each with std > 0, got mean={mean} std={std}")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)  # type: ignore[return-value]


def _normalise(image: torch.Tensor, mean: Stats, std: Stats) -> torch.Tensor:
    """Float 3xHxW in 0..255 -> normalised, with mean/std in 0..1 units as timm's pretrained_cfg gives."""
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (image / 255.0 - m) / s


class EvalTransform:
    """Whole image at its own size, normalised only: evaluation must see every pixel once."""

    def __init__(self, mean: Stats = IMAGENET_MEAN, std: Stats = IMAGENET_STD) -> None:
        self.mean, self.std = _stats(mean, std)

    def __call__(self, image: np.ndarray, mask: np.ndarray | None) -> Tensors:
        image_t = _normalise(torch.from_numpy(image).permute(2, 0, 1).float(), self.mean, self.std)
        return image_t, None if mask is None else torch.from_numpy(mask).long()


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
    ) -> None:
        low, high = scale_range
        if crop_size < 1 or not 0 < low <= high:
            raise UserError(f"need crop_size >= 1 and 0 < min <= max scale, got {crop_size}, {scale_range}")
        self.crop_size = int(crop_size)
        self.scale_range = (float(low), float(high))
        self.hflip, self.vflip, self.rot90 = hflip, vflip, rot90
        self.mean, self.std = _stats(mean, std)

    def _window(self, size: int, scale: float) -> tuple[int, int, int]:
        """Source span [start, stop) along one axis and its length after rescaling (at most crop)."""
        span = max(1, round(self.crop_size / scale))
        if span >= size:
            return 0, size, min(self.crop_size, max(1, round(size * scale)))
        start = int(torch.randint(size - span + 1, ()))
        return start, start + span, self.crop_size

    def __call__(self, image: np.ndarray, mask: np.ndarray | None) -> Tensors:
        low, high = self.scale_range
        scale = low + (high - low) * float(torch.rand(()))
        y0, y1, out_h = self._window(image.shape[0], scale)
        x0, x1, out_w = self._window(image.shape[1], scale)
        image_t = torch.from_numpy(image[y0:y1, x0:x1]).permute(2, 0, 1).float()[None]
        size = (out_h, out_w)
        image_t = F.interpolate(image_t, size, mode="bilinear", align_corners=False, antialias=True)[0]
        pad = (0, self.crop_size - out_w, 0, self.crop_size - out_h)
        image_t = F.pad(image_t, pad, value=0.0)
        mask_t = None
        if mask is not None:
            mask_t = torch.from_numpy(mask[y0:y1, x0:x1]).float()[None, None]
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
        return _normalise(image_t, self.mean, self.std), mask_t
