"""Sliding-window inference: images larger than the training crop are seen as overlapping windows.

Overlapping logits are blended with per-pixel weights so window borders (where the model sees the
least context) count less than window centres. Huge scenes are split into tiles with context
margins (`iter_tiles`) so that only one tile needs to be in memory at a time.
"""

from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from crossearth_gate.errors import UserError

BLEND_MODES = ("gaussian", "uniform")
_GAUSSIAN_FLOOR = 1e-3


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(int(v) != v or v < 1 for v in pair):
        raise UserError(f"{name} must be a positive integer or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets covering [0, length); the last window is flush with the end."""
    if window < 1 or stride < 1:
        raise UserError(f"window ({window}) and stride ({stride}) must be positive")
    if stride > window:
        raise UserError(f"stride ({stride}) larger than window ({window}) would leave pixels unseen")
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


def _gaussian_1d(n: int) -> Tensor:
    centre_dist = torch.arange(n, dtype=torch.float64) + 0.5 - n / 2
    g = torch.exp(-0.5 * (centre_dist / (n / 4)) ** 2)
    return g / g.max()


def blend_weights(h: int, w: int, mode: str = "gaussian") -> Tensor:
    """Strictly positive (h, w) float32 weights; gaussian peaks at the centre with sigma = size / 4."""
    if mode == "uniform":
        return torch.ones(h, w)
    if mode == "gaussian":
        weights = torch.outer(_gaussian_1d(h), _gaussian_1d(w))
        return weights.clamp_min(_GAUSSIAN_FLOOR).float()
    raise UserError(f"unknown blend mode {mode!r}; choose one of {', '.join(BLEND_MODES)}")


def sliding_window_logits(
    forward: Callable[[Tensor], Tensor],
    image: Tensor,
    window: int | tuple[int, int],
    stride: int | tuple[int, int],
    num_classes: int,
    batch_size: int = 4,
    blend: str = "gaussian",
) -> Tensor:
    """Blended (C, H, W) float32 logits of `image` ((3, H, W) or (1, 3, H, W)) from windowed `forward` calls.

    Dimensions smaller than the window are zero-padded at the bottom/right and cropped back.
    """
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3:
        raise ValueError(f"image must be (C, H, W) or (1, C, H, W), got {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"image must be a floating-point tensor, got {image.dtype}")
    if batch_size < 1:
        raise UserError(f"batch_size must be positive, got {batch_size}")
    (win_h, win_w), (stride_h, stride_w) = _pair(window, "window"), _pair(stride, "stride")
    height, width = image.shape[-2:]
    pad_h, pad_w = max(win_h - height, 0), max(win_w - width, 0)
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h))
    full_h, full_w = image.shape[-2:]

    weights = blend_weights(win_h, win_w, blend).to(image.device)
    logits_sum = torch.zeros(num_classes, full_h, full_w, device=image.device)
    weight_sum = torch.zeros(1, full_h, full_w, device=image.device)
    corners = [
        (top, left)
        for top in window_starts(full_h, win_h, stride_h)
        for left in window_starts(full_w, win_w, stride_w)
    ]
    for first in range(0, len(corners), batch_size):
        chunk = corners[first : first + batch_size]
        batch = torch.stack([image[:, t : t + win_h, lf : lf + win_w] for t, lf in chunk])
        out = forward(batch)
        expected = (len(chunk), num_classes, win_h, win_w)
        if tuple(out.shape) != expected:
            raise ValueError(f"forward returned shape {tuple(out.shape)}, expected {expected}")
        for (top, left), window_logits in zip(chunk, out.float(), strict=True):
            logits_sum[:, top : top + win_h, left : left + win_w] += window_logits * weights
            weight_sum[:, top : top + win_h, left : left + win_w] += weights
    return (logits_sum / weight_sum)[:, :height, :width]


class Window(NamedTuple):
    """A pixel rectangle; convert with rasterio.windows.Window(col_off, row_off, width, height)."""

    row_off: int
    col_off: int
    height: int
    width: int


class Tile(NamedTuple):
    """`read` = core plus clipped context margin; `write` = core, found at (core_row, core_col) in read."""

    read: Window
    write: Window
    core_row: int
    core_col: int


def _spans(length: int, tile: int, margin: int) -> Iterator[tuple[int, int, int, int]]:
    """(read_start, read_len, core_start, core_len) along one axis."""
    for core_start in range(0, length, tile):
        core_len = min(tile, length - core_start)
        read_start = max(core_start - margin, 0)
        read_end = min(core_start + core_len + margin, length)
        yield read_start, read_end - read_start, core_start, core_len


def iter_tiles(height: int, width: int, tile: int, margin: int) -> Iterator[Tile]:
    """Row-major tiles whose cores cover the (height, width) scene exactly once."""
    if height < 1 or width < 1:
        raise UserError(f"scene size must be positive, got {height}x{width}")
    if tile < 1 or margin < 0:
        raise UserError(f"tile ({tile}) must be positive and margin ({margin}) non-negative")
    columns = list(_spans(width, tile, margin))
    for read_r, read_h, core_r, core_h in _spans(height, tile, margin):
        for read_c, read_w, core_c, core_w in columns:
            yield Tile(
                read=Window(read_r, read_c, read_h, read_w),
                write=Window(core_r, core_c, core_h, core_w),
                core_row=core_r - read_r,
                core_col=core_c - read_c,
            )
