"""DACS's strong augmentation of mixed images: colour jitter and Gaussian blur, drawn from one generator.

Works on normalised images: back to [0, 1] RGB, jitter, blur, normalise again. Labels are untouched
(nothing here moves a pixel).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .settings import AdaptationConfig


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def jitter(rgb: Tensor, brightness: float, contrast: float, saturation: float) -> Tensor:
    """torchvision's factor semantics on one (3, H, W) image in [0, 1]."""
    grey_weights = torch.tensor([0.299, 0.587, 0.114], device=rgb.device).view(3, 1, 1)
    rgb = (rgb * brightness).clamp(0, 1)
    mean_grey = (rgb * grey_weights).sum(0).mean()
    rgb = ((rgb - mean_grey) * contrast + mean_grey).clamp(0, 1)
    grey = (rgb * grey_weights).sum(0, keepdim=True)
    return ((rgb - grey) * saturation + grey).clamp(0, 1)


def gaussian_blur(image: Tensor, sigma: float) -> Tensor:
    """Separable blur of (C, H, W) with a kernel of about a tenth of the image side (DACS), reflect-padded."""
    size = max(3, int(math.ceil(0.1 * min(image.shape[-2:]))) | 1)
    x = torch.arange(size, device=image.device, dtype=image.dtype) - size // 2
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = image.shape[0]
    out = F.pad(image[None], (size // 2, size // 2, size // 2, size // 2), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, size), groups=c)
    out = F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, size, 1), groups=c)
    return out[0]


def strong_augment(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...], cfg: AdaptationConfig,
                   generator: torch.Generator) -> Tensor:
    """Per image: colour jitter with probability ``jitter_p``, then blur with probability ``blur_p``."""
    m = torch.tensor(mean, device=images.device).view(3, 1, 1)
    s = torch.tensor(std, device=images.device).view(3, 1, 1)
    out = []
    strength = cfg.jitter_strength
    for image in images:
        rgb = (image * s + m).clamp(0, 1)
        if float(torch.rand((), generator=generator)) < cfg.jitter_p:
            factors = [_uniform(1 - strength, 1 + strength, generator) for _ in range(3)]
            rgb = jitter(rgb, *factors)
        if float(torch.rand((), generator=generator)) < cfg.blur_p:
            rgb = gaussian_blur(rgb, _uniform(*cfg.blur_sigma, generator))
        out.append((rgb - m) / s)
    return torch.stack(out)
