"""Frequency module: the FFT low/high split and the Earth-Adapter-style mixture on patch tokens only."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from crossearth_gate.toolbox.frequency import FrequencyAdapter, frequency_split, low_pass_mask
from support.models import perturb

GRIDS = [(4, 4), (5, 5), (3, 7), (8, 6), (1, 1)]


def grid_features(h: int, w: int, channels: int = 6, seed: int = 0) -> Tensor:
    return torch.randn(2, channels, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("h", "w"), GRIDS)
@pytest.mark.parametrize("cutoff", [0.1, 0.25, 0.5, 1.0])
def test_low_plus_high_reconstructs(h: int, w: int, cutoff: float) -> None:
    x = grid_features(h, w)
    low, high = frequency_split(x, cutoff)
    assert low.shape == high.shape == x.shape and low.dtype == x.dtype
    torch.testing.assert_close(low + high, x, atol=1e-5, rtol=0)
    if cutoff == 1.0:  # the window covers the whole spectrum
        torch.testing.assert_close(low, x, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("h", "w"), GRIDS)
def test_constant_grid_is_all_low_frequency(h: int, w: int) -> None:
    x = torch.full((1, 3, h, w), 2.5)
    x[:, 1] = -1.0
    low, high = frequency_split(x, 0.25)
    torch.testing.assert_close(low, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(high, torch.zeros_like(x), atol=1e-5, rtol=0)


def test_checkerboard_is_all_high_frequency() -> None:
    i, j = torch.meshgrid(torch.arange(8), torch.arange(6), indexing="ij")
    x = ((-1.0) ** (i + j)).expand(1, 2, 8, 6).clone()
    low, high = frequency_split(x, 0.25)
    torch.testing.assert_close(low, torch.zeros_like(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(high, x, atol=1e-5, rtol=0)


def test_low_part_is_smoother_than_input() -> None:
    x = grid_features(16, 16)
    low, high = frequency_split(x, 0.25)

    def roughness(t: Tensor) -> float:
        return float((t[..., 1:, :] - t[..., :-1, :]).abs().mean() + (t[..., 1:] - t[..., :-1]).abs().mean())

    assert roughness(low) < 0.5 * roughness(x) < roughness(high)


def expected_width(size: int, cutoff: float) -> int:
    """Independent rule: the odd width nearest to cutoff·size (ties up; never wider than the axis' odd part)."""
    if cutoff >= 1.0:
        return size
    return min(range(1, size + 1, 2), key=lambda width: (abs(width - cutoff * size), -width))


@pytest.mark.parametrize(("h", "w", "cutoff"), [(32, 32, 0.25), (16, 8, 0.25), (5, 7, 0.2), (3, 3, 0.1),
                                                 (16, 16, 0.25), (8, 6, 0.9), (4, 4, 1.0)])
def test_low_pass_window_is_centred_with_relative_size(h: int, w: int, cutoff: float) -> None:
    mask = low_pass_mask(h, w, cutoff)
    kh, kw = expected_width(h, cutoff), expected_width(w, cutoff)
    assert mask.shape == (h, w) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert mask.sum() == kh * kw
    assert mask[h // 2, w // 2] == 1  # DC after fftshift
    rows, cols = mask.nonzero(as_tuple=True)
    assert rows.max() - rows.min() + 1 == kh and cols.max() - cols.min() + 1 == kw
    if cutoff < 1.0:  # centred exactly on the zero frequency
        assert rows.float().mean() == h // 2 and cols.float().mean() == w // 2


def test_window_at_16x16_spans_minus_two_to_plus_two() -> None:
    """The review case: round(0.25·16) = 4 is even; the window must be −2…+2, not −2…+1."""
    mask = low_pass_mask(16, 16, 0.25)
    rows = mask[:, 8].nonzero().flatten() - 8
    assert rows.tolist() == [-2, -1, 0, 1, 2]


@pytest.mark.parametrize(("h", "w"), [(16, 16), (8, 6), (5, 7), (4, 9)])
@pytest.mark.parametrize("cutoff", [0.1, 0.25, 0.5, 0.9, 1.0])
def test_window_is_symmetric_so_the_low_band_is_real(h: int, w: int, cutoff: float) -> None:
    """Mask(k) == Mask(−k) in unshifted frequencies ⇒ the inverse FFT of the low part has no imaginary part."""
    unshifted = torch.fft.ifftshift(low_pass_mask(h, w, cutoff))
    flipped = unshifted[(-torch.arange(h)) % h][:, (-torch.arange(w)) % w]
    assert torch.equal(unshifted, flipped)
    x = grid_features(h, w).double()
    spectrum = torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))
    low = torch.fft.ifft2(torch.fft.ifftshift(spectrum * low_pass_mask(h, w, cutoff).double(), dim=(-2, -1)),
                          norm="ortho")
    assert low.imag.abs().max() < 1e-12


@pytest.mark.parametrize(("h", "w"), GRIDS + [(16, 16)])
@pytest.mark.parametrize("cutoff", [0.1, 0.25, 1.0])
def test_one_inverse_fft_equals_the_two_inverse_fft_formula(h: int, w: int, cutoff: float) -> None:
    """Reference: the earlier formula, an inverse FFT of each masked part (real part of each)."""
    x = grid_features(h, w)
    spectrum = torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))
    mask = low_pass_mask(h, w, cutoff)

    def back(part: Tensor) -> Tensor:
        return torch.fft.ifft2(torch.fft.ifftshift(part, dim=(-2, -1)), norm="ortho").real

    low, high = frequency_split(x, cutoff)
    torch.testing.assert_close(low, back(spectrum * mask), atol=1e-6, rtol=0)
    torch.testing.assert_close(high, back(spectrum * (1 - mask)), atol=1e-6, rtol=0)


def test_float64_stays_float64_and_exact() -> None:
    x = grid_features(16, 16).double()
    low, high = frequency_split(x, 0.25)
    assert low.dtype == high.dtype == torch.float64
    torch.testing.assert_close(low + high, x, atol=1e-13, rtol=0)
    half = frequency_split(x.half(), 0.25)
    assert half[0].dtype == torch.float16


@pytest.mark.parametrize("cutoff", [0.0, -0.1, 1.5])
def test_low_pass_rejects_bad_cutoff(cutoff: float) -> None:
    with pytest.raises(ValueError):
        low_pass_mask(4, 4, cutoff)


def adapter_and_tokens(h: int, w: int, prefix: int, dim: int = 16) -> tuple[FrequencyAdapter, Tensor]:
    torch.manual_seed(0)
    adapter = FrequencyAdapter(dim, 4, cutoff=0.25)
    perturb(adapter, seed=1, std=0.3)
    tokens = torch.randn(2, prefix + h * w, dim, generator=torch.Generator().manual_seed(2))
    return adapter, tokens


def test_adapter_is_zero_at_init() -> None:
    adapter = FrequencyAdapter(16, 4)
    tokens = torch.randn(1, 1 + 12, 16)
    assert adapter(tokens, (3, 4), 1).abs().max() == 0
    assert adapter.scale.item() == pytest.approx(0.1)


@pytest.mark.parametrize(("h", "w"), GRIDS)
@pytest.mark.parametrize("prefix", [0, 1, 5])
def test_adapter_leaves_prefix_tokens_untouched(h: int, w: int, prefix: int) -> None:
    adapter, tokens = adapter_and_tokens(h, w, prefix)
    delta = adapter(tokens, (h, w), prefix)
    assert delta.shape == tokens.shape
    assert torch.equal(delta[:, :prefix], torch.zeros_like(delta[:, :prefix]))
    assert delta[:, prefix:].abs().min() > 0
    # prefix tokens do not leak into the patch tokens' residual either
    changed = tokens.clone()
    changed[:, :prefix] += 10.0
    torch.testing.assert_close(adapter(changed, (h, w), prefix), delta, atol=0, rtol=0)


def test_adapter_uses_the_grid_layout() -> None:
    """Raw expert is per token; the low/high experts must see the 2-D neighbourhood of each token."""
    adapter, tokens = adapter_and_tokens(8, 6, 1)
    delta = adapter(tokens, (8, 6), 1)
    # same tokens read as a 6×8 grid give a different spectrum, hence a different residual
    assert not torch.allclose(adapter(tokens, (6, 8), 1), delta, atol=1e-5)
    # zeroing the low/high experts leaves a per-token function: permuting patches permutes the delta
    with torch.no_grad():
        for expert in adapter.experts[1:]:
            expert.up.weight.zero_()
            expert.up.bias.zero_()
    perm = torch.randperm(48, generator=torch.Generator().manual_seed(0))
    shuffled = torch.cat([tokens[:, :1], tokens[:, 1:][:, perm]], dim=1)
    base = adapter(tokens, (8, 6), 1)
    torch.testing.assert_close(adapter(shuffled, (8, 6), 1)[:, 1:], base[:, 1:][:, perm], atol=1e-6, rtol=0)


def test_adapter_matches_written_out_mixture() -> None:
    h, w, prefix = 3, 5, 2
    adapter, tokens = adapter_and_tokens(h, w, prefix)
    patches = tokens[:, prefix:]
    grid = patches.transpose(1, 2).reshape(2, -1, h, w)
    low, high = frequency_split(grid, 0.25)
    views = [patches, low.flatten(2).transpose(1, 2), high.flatten(2).transpose(1, 2)]
    gates = torch.softmax(adapter.router(patches), dim=-1)
    mixed = sum(gates[..., e, None] * adapter.experts[e](views[e]) for e in range(3))
    torch.testing.assert_close(adapter(tokens, (h, w), prefix)[:, prefix:], adapter.scale * mixed,
                               atol=1e-6, rtol=0)
    assert math.isclose(float(gates.detach().sum(-1).mean()), 1.0, rel_tol=1e-6)


def test_adapter_rejects_wrong_grid() -> None:
    adapter, tokens = adapter_and_tokens(3, 4, 1)
    with pytest.raises(ValueError, match="3x5"):
        adapter(tokens, (3, 5), 1)


def test_adapter_gradients_reach_all_experts_and_router() -> None:
    adapter, tokens = adapter_and_tokens(4, 4, 1)
    adapter(tokens, (4, 4), 1).pow(2).sum().backward()
    for name, param in adapter.named_parameters():
        assert param.grad is not None and param.grad.abs().max() > 0, name
