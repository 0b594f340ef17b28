"""Sliding-window inference: images larger than the training crop are seen as overlapping windows.

Overlapping logits are blended with per-pixel weights so window borders (where the model sees the
least context) count less than window centres. Huge scenes are split into tiles (`iter_tiles`) so
that only one tile needs to be in memory at a time; each tile runs exactly the windows of the
whole-scene grid that touch its core, so tiled and whole-scene predictions agree exactly.
"""

import typing
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from crossearth_gate.util.errors import UserError

BlendMode = Literal["gaussian", "uniform"]  # eval.blend: how overlapping windows are weighted
BLEND_MODES: tuple[BlendMode, ...] = typing.get_args(BlendMode)
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


def _as_image(image: Tensor) -> Tensor:
    """(C, H, W) float view of a single image, accepting the batched (1, C, H, W) form too."""
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3:
        raise ValueError(f"image must be (C, H, W) or (1, C, H, W), got {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"image must be a floating-point tensor, got {image.dtype}")
    return image


def sliding_window_logits(
    forward: Callable[[Tensor], Tensor],
    image: Tensor,
    window: int | tuple[int, int],
    stride: int | tuple[int, int],
    num_classes: int,
    batch_size: int = 4,
    blend: str = "gaussian",
) -> Tensor:
    """Blended (C, H, W) float32 logits of `image` ((C, H, W) or (1, C, H, W)) from windowed `forward` calls.

    Windows follow the `window_starts` grid of the whole image; dimensions smaller than the window are
    zero-padded at the bottom/right and cropped back.
    """
    image = _as_image(image)
    (win_h, win_w), (stride_h, stride_w) = _pair(window, "window"), _pair(stride, "stride")
    rows = window_starts(image.shape[-2], win_h, stride_h)
    cols = window_starts(image.shape[-1], win_w, stride_w)
    return sliding_window_logits_at(forward, image, (win_h, win_w), rows, cols, num_classes, batch_size, blend)


def sliding_window_logits_at(
    forward: Callable[[Tensor], Tensor],
    image: Tensor,
    window: int | tuple[int, int],
    row_starts: Sequence[int],
    col_starts: Sequence[int],
    num_classes: int,
    batch_size: int = 4,
    blend: str = "gaussian",
) -> Tensor:
    """Blended (C, H, W) logits from windows at the given starts (relative to `image`'s origin).

    Lets a tile run precisely its share of a larger image's window grid. Windows reaching past the
    bottom/right are zero-padded there, as for images smaller than the window; every pixel must lie
    in some window. Windows run row-major, so each pixel sums its windows in the whole-grid order.
    """
    image = _as_image(image)
    if batch_size < 1:
        raise UserError(f"batch_size must be positive, got {batch_size}")
    win_h, win_w = _pair(window, "window")
    if not row_starts or not col_starts or min(row_starts) < 0 or min(col_starts) < 0:
        raise ValueError(f"window starts must be non-empty and non-negative, got {row_starts} x {col_starts}")
    height, width = image.shape[-2:]
    pad_h, pad_w = max(max(row_starts) + win_h - height, 0), max(max(col_starts) + win_w - width, 0)
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h))
    full_h, full_w = image.shape[-2:]

    weights = blend_weights(win_h, win_w, blend).to(image.device)
    logits_sum = torch.zeros(num_classes, full_h, full_w, device=image.device)
    weight_sum = torch.zeros(1, full_h, full_w, device=image.device)
    corners = [(top, left) for top in row_starts for left in col_starts]
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
    weight_sum = weight_sum[:, :height, :width]
    if not weight_sum.all():
        raise ValueError(f"windows at {row_starts} x {col_starts} leave pixels of the {height}x{width} image unseen")
    return logits_sum[:, :height, :width] / weight_sum


class Window(NamedTuple):
    """A pixel rectangle; convert with rasterio.windows.Window(col_off, row_off, width, height)."""

    row_off: int
    col_off: int
    height: int
    width: int


class Tile(NamedTuple):
    """`read` = core plus context; `write` = core, found at (core_row, core_col) in read.

    `row_starts`/`col_starts` are the whole-scene grid's windows that touch the core, relative to
    the read origin; `read` is exactly their union (clipped to the scene).
    """

    read: Window
    write: Window
    core_row: int
    core_col: int
    row_starts: tuple[int, ...]
    col_starts: tuple[int, ...]


class _Span(NamedTuple):
    read_start: int
    read_len: int
    core_start: int
    core_len: int
    starts: tuple[int, ...]


def _spans(length: int, tile: int, window: int, stride: int) -> Iterator[_Span]:
    """Per core along one axis: the global windows overlapping it and the extent of their union."""
    grid = window_starts(length, window, stride)
    for core_start in range(0, length, tile):
        core_end = min(core_start + tile, length)
        # Windows [s, s + window) overlapping [core_start, core_end): core_start - window < s < core_end.
        touching = grid[bisect_right(grid, core_start - window) : bisect_left(grid, core_end)]
        read_start, read_end = touching[0], min(touching[-1] + window, length)
        starts = tuple(s - read_start for s in touching)
        yield _Span(read_start, read_end - read_start, core_start, core_end - core_start, starts)


def iter_tiles(
    height: int, width: int, tile: int, window: int | tuple[int, int], stride: int | tuple[int, int]
) -> Iterator[Tile]:
    """Row-major tiles whose cores cover the (height, width) scene exactly once.

    Each tile reads at most `window - 1` pixels of context beyond its core on each side.
    """
    if height < 1 or width < 1:
        raise UserError(f"scene size must be positive, got {height}x{width}")
    if tile < 1:
        raise UserError(f"tile ({tile}) must be positive")
    (win_h, win_w), (stride_h, stride_w) = _pair(window, "window"), _pair(stride, "stride")
    columns = list(_spans(width, tile, win_w, stride_w))
    for row in _spans(height, tile, win_h, stride_h):
        for col in columns:
            yield Tile(
                read=Window(row.read_start, col.read_start, row.read_len, col.read_len),
                write=Window(row.core_start, col.core_start, row.core_len, col.core_len),
                core_row=row.core_start - row.read_start,
                core_col=col.core_start - col.read_start,
                row_starts=row.starts,
                col_starts=col.starts,
            )
