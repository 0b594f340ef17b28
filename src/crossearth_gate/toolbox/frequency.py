"""Frequency module: an Earth-Adapter-style mixture of experts over raw, low- and high-frequency features.

Only PATCH tokens are transformed (reshaped to their h×w grid, any h and w); class and register tokens
pass through untouched.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor, nn

from .adapter import Bottleneck


def _centred_band(size: int, cutoff: float, device: torch.device | None) -> Tensor:
    """Frequencies −r…+r around zero (odd width ≈ cutoff·size, at least 1); the whole axis at cutoff 1.

    An odd, zero-centred window is symmetric under k → −k, so the low band of a real signal is real by
    construction (an even width would take one unpaired frequency and give a complex "low" band).
    """
    if cutoff >= 1.0:
        return torch.ones(size, device=device)
    radius = max(0, math.floor((cutoff * size - 1) / 2 + 0.5))
    radius = min(radius, (size - 1) // 2)  # keep the unpaired Nyquist bin of an even axis out
    band = torch.zeros(size, device=device)
    band[size // 2 - radius : size // 2 + radius + 1] = 1.0
    return band


def low_pass_mask(height: int, width: int, cutoff: float, device: torch.device | None = None) -> Tensor:
    """A zero-centred window of relative size ``cutoff`` in the fftshift-ed spectrum (odd width, ≥ 1 bin)."""
    if not 0.0 < cutoff <= 1.0:
        raise ValueError(f"frequency cutoff must be in (0, 1], got {cutoff}")
    return _centred_band(height, cutoff, device)[:, None] * _centred_band(width, cutoff, device)[None, :]


def frequency_split(grid: Tensor, cutoff: float) -> tuple[Tensor, Tensor]:
    """Split (B, C, h, w) features into low- and high-frequency parts with low + high == input.

    Orthonormal 2-D FFT, shift, symmetric low-pass window, ONE inverse FFT for the low band; the high
    band is the rest (x − low), exactly what a second inverse FFT of the complement would give.
    Half-precision inputs are transformed in float32; float32 and float64 keep their precision.
    """
    height, width = grid.shape[-2:]
    work = grid if grid.dtype in (torch.float32, torch.float64) else grid.float()
    spectrum = torch.fft.fftshift(torch.fft.fft2(work, norm="ortho"), dim=(-2, -1))
    mask = low_pass_mask(height, width, cutoff, grid.device).to(work.dtype)
    low = torch.fft.ifft2(torch.fft.ifftshift(spectrum * mask, dim=(-2, -1)), norm="ortho").real
    return low.to(grid.dtype), (work - low).to(grid.dtype)


@functools.lru_cache(maxsize=64)
def low_pass_matrix(size: int, cutoff: float) -> Tensor:
    """The (size, size) float64 matrix of the 1-D low-pass along one axis: FFT, shift, window, unshift, IFFT.

    The window is symmetric under k → −k, so this operator is a REAL circulant matrix (its imaginary part
    is rounding, dropped); the 2-D low pass is separable: ``low = P_h · X · P_wᵀ``. Computed in numpy so
    that a trace records the matrix as a constant, not the complex FFTs that made it. Cached: callers must
    not modify it in place.
    """
    band = _centred_band(size, cutoff, None).numpy().astype(np.float64)[:, None]
    spectrum = np.fft.fftshift(np.fft.fft(np.eye(size), axis=0, norm="ortho"), axes=0)
    return torch.from_numpy(np.fft.ifft(np.fft.ifftshift(spectrum * band, axes=0), axis=0, norm="ortho").real.copy())


def matrix_frequency_split(grid: Tensor, cutoff: float) -> tuple[Tensor, Tensor]:
    """``frequency_split`` as two real matrix products: exportable to any ONNX runtime (no complex DFT op),
    equal to the FFT route up to float32 rounding. The matrices become constants of a traced graph."""
    height, width = grid.shape[-2:]
    work = grid if grid.dtype in (torch.float32, torch.float64) else grid.float()
    rows = low_pass_matrix(int(height), cutoff).to(work.dtype)
    cols = low_pass_matrix(int(width), cutoff).to(work.dtype)
    low = rows @ work @ cols.T
    return low.to(grid.dtype), (work - low).to(grid.dtype)


class FrequencyAdapter(nn.Module):
    """EA(T) = scale · Σ_e router_e(T) · expert_e(view_e(T)) for views raw / low / high frequency."""

    def __init__(self, dim: int, hidden: int, cutoff: float = 0.25, scale_init: float = 0.1):
        super().__init__()
        self.cutoff = cutoff
        self.experts = nn.ModuleList(Bottleneck(dim, hidden) for _ in range(3))
        self.router = nn.Linear(dim, 3)
        self.scale = nn.Parameter(torch.tensor(float(scale_init)))
        self.split = frequency_split  # merge_for_inference swaps in matrix_frequency_split (same result, faster)

    def forward(self, tokens: Tensor, grid: tuple[int, int], num_prefix: int) -> Tensor:
        """Return the residual to add to ``tokens`` (B, N, C); zero on the prefix tokens."""
        b, n, c = tokens.shape
        h, w = grid
        patches = tokens[:, num_prefix:]
        if patches.shape[1] != h * w:
            raise ValueError(f"{patches.shape[1]} patch tokens do not form a {h}x{w} grid")
        as_grid = patches.transpose(1, 2).reshape(b, c, h, w)
        low, high = self.split(as_grid, self.cutoff)
        views = [patches] + [v.reshape(b, c, h * w).transpose(1, 2) for v in (low, high)]
        weights = self.router(patches).softmax(dim=-1)
        mixed = sum(weights[..., e : e + 1] * expert(view) for e, (expert, view) in
                    enumerate(zip(self.experts, views, strict=True)))
        delta = mixed * self.scale
        return torch.cat([torch.zeros_like(tokens[:, :num_prefix]), delta], dim=1)

    def output_weights(self) -> list[nn.Parameter]:
        """The experts' zero-initialised up-projections."""
        return [w for expert in self.experts for w in expert.output_weights()]
