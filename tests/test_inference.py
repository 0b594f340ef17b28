"""Sliding-window inference must reproduce pointwise models, and tiling must reproduce the whole-image run."""

import pytest
import torch
from torch import Tensor, nn

from crossearth_gate.model.inference import (
    blend_weights,
    iter_tiles,
    sliding_window_logits,
    sliding_window_logits_at,
    window_starts,
)
from crossearth_gate.util.errors import UserError

NUM_CLASSES = 5


@pytest.fixture
def pointwise() -> nn.Module:
    """A 1x1 conv: its output at a pixel depends only on that pixel, so windowing cannot change it."""
    torch.manual_seed(0)
    return nn.Conv2d(3, NUM_CLASSES, kernel_size=1)


def test_window_starts_edge_cases() -> None:
    assert window_starts(5, 8, 4) == [0]
    assert window_starts(8, 8, 4) == [0]
    assert window_starts(16, 8, 4) == [0, 4, 8]
    assert window_starts(17, 8, 4) == [0, 4, 8, 9]
    assert window_starts(9, 8, 8) == [0, 1]
    with pytest.raises(UserError):
        window_starts(16, 8, 9)
    with pytest.raises(UserError):
        window_starts(16, 8, 0)


def test_blend_weights_shapes() -> None:
    uniform = blend_weights(4, 6, "uniform")
    assert torch.equal(uniform, torch.ones(4, 6))
    gauss = blend_weights(9, 7, "gaussian")
    assert gauss.shape == (9, 7)
    assert (gauss > 0).all()
    assert gauss.argmax() == 4 * 7 + 3  # centre pixel
    assert torch.allclose(gauss, gauss.flip(0)) and torch.allclose(gauss, gauss.flip(1))
    assert gauss[0, 0] < gauss[0, 3] < gauss[4, 3]
    with pytest.raises(UserError, match="blend mode"):
        blend_weights(4, 4, "cosine")


@pytest.mark.parametrize("blend", ["gaussian", "uniform"])
@pytest.mark.parametrize(
    ("height", "width", "window", "stride"),
    [
        (5, 6, 8, 4),  # smaller than the window
        (8, 8, 8, 4),  # equal to the window
        (19, 23, 8, 5),  # not divisible by the stride
        (11, 30, (6, 10), (4, 7)),  # non-square windows and image
        (20, 6, 8, 3),  # smaller than the window in one dimension only
    ],
)
def test_pointwise_model_matches_whole_image(pointwise, height, width, window, stride, blend) -> None:
    image = torch.randn(3, height, width)
    with torch.no_grad():
        expected = pointwise(image[None])[0]
        got = sliding_window_logits(pointwise, image, window, stride, NUM_CLASSES, batch_size=3, blend=blend)
        got_batched = sliding_window_logits(pointwise, image[None], window, stride, NUM_CLASSES, blend=blend)
    assert got.shape == (NUM_CLASSES, height, width)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_batched, expected, atol=1e-5, rtol=0)


def _window_mean(batch: Tensor) -> Tensor:
    """Constant logits per window: class c gets (window mean + c)."""
    mean = batch.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)
    offsets = torch.arange(2, dtype=batch.dtype).view(1, 2, 1, 1)
    return (mean + offsets).expand(-1, -1, *batch.shape[-2:])


@pytest.mark.parametrize("blend", ["gaussian", "uniform"])
def test_blend_formula_at_one_pixel(blend) -> None:
    image = torch.randn(3, 6, 6)
    out = sliding_window_logits(_window_mean, image, window=4, stride=2, num_classes=2, blend=blend)
    # Window starts are [0, 2] in both axes; pixel (3, 3) lies in all four windows, at local
    # row/col 3 in windows starting at 0 and at local row/col 1 in windows starting at 2.
    weights = blend_weights(4, 4, blend)
    numerator = denominator = 0.0
    for top in (0, 2):
        for left in (0, 2):
            w = weights[3 - top, 3 - left]
            numerator += w * image[:, top : top + 4, left : left + 4].mean()
            denominator += w
    torch.testing.assert_close(out[0, 3, 3], numerator / denominator)
    torch.testing.assert_close(out[1, 3, 3], numerator / denominator + 1)
    # Pixel (0, 0) is only in the first window, whatever the weights.
    torch.testing.assert_close(out[0, 0, 0], image[:, :4, :4].mean())


def test_bad_forward_shape_is_reported() -> None:
    with pytest.raises(ValueError, match="forward returned shape"):
        sliding_window_logits(lambda b: b, torch.randn(3, 8, 8), 4, 4, num_classes=2)


def test_explicit_starts_validate_their_windows() -> None:
    image = torch.randn(3, 10, 10)
    with pytest.raises(ValueError, match="unseen"):
        sliding_window_logits_at(_window_mean, image, 4, [0, 6], [0, 4], num_classes=2)
    with pytest.raises(ValueError, match="non-negative"):
        sliding_window_logits_at(_window_mean, image, 4, [-1, 6], [0, 6], num_classes=2)


def _overlaps(start: int, window: int, core_start: int, core_len: int) -> bool:
    return start < core_start + core_len and start + window > core_start


@pytest.mark.parametrize(
    ("height", "width", "tile", "window", "stride"),
    [(23, 17, 8, 5, 3), (8, 8, 8, 4, 2), (5, 30, 7, 8, 8), (150, 97, 40, 32, 21), (30, 41, 9, (6, 10), (4, 7))],
)
def test_tiles_run_the_global_windows_touching_their_core(height, width, tile, window, stride) -> None:
    win_h, win_w = (window, window) if isinstance(window, int) else window
    stride_h, stride_w = (stride, stride) if isinstance(stride, int) else stride
    grid_rows, grid_cols = window_starts(height, win_h, stride_h), window_starts(width, win_w, stride_w)
    counts = torch.zeros(height, width, dtype=torch.long)
    for t in iter_tiles(height, width, tile, window, stride):
        read, write = t.read, t.write
        counts[write.row_off : write.row_off + write.height, write.col_off : write.col_off + write.width] += 1
        assert read.row_off + t.core_row == write.row_off and read.col_off + t.core_col == write.col_off
        assert t.core_row + write.height <= read.height and t.core_col + write.width <= read.width
        rows = [read.row_off + s for s in t.row_starts]
        cols = [read.col_off + s for s in t.col_starts]
        assert rows == [s for s in grid_rows if _overlaps(s, win_h, write.row_off, write.height)]
        assert cols == [s for s in grid_cols if _overlaps(s, win_w, write.col_off, write.width)]
        # The read is the windows' union clipped to the scene: at most window - 1 pixels of context a side.
        assert (read.row_off, read.row_off + read.height) == (rows[0], min(rows[-1] + win_h, height))
        assert (read.col_off, read.col_off + read.width) == (cols[0], min(cols[-1] + win_w, width))
    assert torch.equal(counts, torch.ones_like(counts))


class WindowSensitive(nn.Module):
    """Logits depend on the whole window (its mean) and on each pixel's place in it (zero-padded 3x3 conv),
    so any difference in window placement between tiled and whole-image runs shows up."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, NUM_CLASSES, kernel_size=3, padding=1)

    def forward(self, batch: Tensor) -> Tensor:
        return self.conv(batch) + 10 * batch.mean(dim=(1, 2, 3), keepdim=True)


@pytest.mark.parametrize(
    ("height", "width", "tile", "window", "stride", "blend"),
    [
        (37, 29, 12, 8, 5, "gaussian"),
        (150, 97, 40, 32, 21, "gaussian"),
        (150, 97, 40, 32, 21, "uniform"),
        (20, 6, 4, 8, 3, "gaussian"),  # smaller than the window in one dimension only
        (5, 6, 2, 8, 4, "gaussian"),  # smaller than the window: every tile pads like the whole image
        (30, 41, 9, (6, 10), (4, 7), "gaussian"),
    ],
)
def test_tiled_prediction_equals_whole_image(height, width, tile, window, stride, blend) -> None:
    model, image = WindowSensitive(), torch.randn(3, height, width)
    with torch.no_grad():
        expected = sliding_window_logits(model, image, window, stride, NUM_CLASSES, batch_size=5, blend=blend)
        stitched = torch.full_like(expected, float("nan"))
        for t in iter_tiles(height, width, tile, window, stride):
            r, w = t.read, t.write
            crop = image[:, r.row_off : r.row_off + r.height, r.col_off : r.col_off + r.width]
            logits = sliding_window_logits_at(model, crop, window, t.row_starts, t.col_starts, NUM_CLASSES,
                                              batch_size=3, blend=blend)
            core = logits[:, t.core_row : t.core_row + w.height, t.core_col : t.core_col + w.width]
            stitched[:, w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] = core
    torch.testing.assert_close(stitched, expected, atol=1e-5, rtol=0)
