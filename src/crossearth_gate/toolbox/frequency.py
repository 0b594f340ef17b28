"""Frequency module: an Earth-Adapter-style mixture of experts over raw, low- and high-frequency features.

Only PATCH tokens are transformed (reshaped to their h×w grid, any h and w); class and register tokens
pass through untouched.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .adapter import Bottleneck


def _centred_band(size: int, cutoff: float, device: torch.device | None) -> Tensor:
    keep = max(1, round(cutoff * size))
    start = size // 2 - keep // 2
    band = torch.zeros(size, device=device)
    band[start : start + keep] = 1.0
    return band


def low_pass_mask(height: int, width: int, cutoff: float, device: torch.device | None = None) -> Tensor:
    """A centred window of relative size ``cutoff`` in the fftshift-ed spectrum (at least one bin)."""
    if not 0.0 < cutoff <= 1.0:
        raise ValueError(f"frequency cutoff must be in (0, 1], got {cutoff}")
    return _centred_band(height, cutoff, device)[:, None] * _centred_band(width, cutoff, device)[None, :]


def frequency_split(grid: Tensor, cutoff: float) -> tuple[Tensor, Tensor]:
    """Split (B, C, h, w) features into low- and high-frequency parts with low + high == input.

    Orthonormal 2-D FFT, shift, centred low-pass window, inverse FFT of both parts, real part.
    """
    height, width = grid.shape[-2:]
    spectrum = torch.fft.fftshift(torch.fft.fft2(grid.float(), norm="ortho"), dim=(-2, -1))
    mask = low_pass_mask(height, width, cutoff, grid.device)

    def back(part: Tensor) -> Tensor:
        return torch.fft.ifft2(torch.fft.ifftshift(part, dim=(-2, -1)), norm="ortho").real.to(grid.dtype)

    return back(spectrum * mask), back(spectrum * (1 - mask))


class FrequencyAdapter(nn.Module):
    """EA(T) = scale · Σ_e router_e(T) · expert_e(view_e(T)) for views raw / low / high frequency."""

    def __init__(self, dim: int, hidden: int, cutoff: float = 0.25, scale_init: float = 0.1):
        super().__init__()
        self.cutoff = cutoff
        self.experts = nn.ModuleList(Bottleneck(dim, hidden) for _ in range(3))
        self.router = nn.Linear(dim, 3)
        self.scale = nn.Parameter(torch.tensor(float(scale_init)))

    def forward(self, tokens: Tensor, grid: tuple[int, int], num_prefix: int) -> Tensor:
        """Return the residual to add to ``tokens`` (B, N, C); zero on the prefix tokens."""
        b, n, c = tokens.shape
        h, w = grid
        patches = tokens[:, num_prefix:]
        if patches.shape[1] != h * w:
            raise ValueError(f"{patches.shape[1]} patch tokens do not form a {h}x{w} grid")
        as_grid = patches.transpose(1, 2).reshape(b, c, h, w)
        low, high = frequency_split(as_grid, self.cutoff)
        views = [patches] + [v.reshape(b, c, h * w).transpose(1, 2) for v in (low, high)]
        weights = self.router(patches).softmax(dim=-1)
        mixed = sum(weights[..., e : e + 1] * expert(view) for e, (expert, view) in
                    enumerate(zip(self.experts, views, strict=True)))
        delta = mixed * self.scale
        return torch.cat([torch.zeros_like(tokens[:, :num_prefix]), delta], dim=1)
