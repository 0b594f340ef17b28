"""More than three bands on an RGB-pretrained backbone: a patch embedding that grows to the data's channels.

Each input channel either takes one of the pretrained R, G, B kernels (frozen, as the backbone) or gets a
new kernel that starts at zero and trains. At zero the extra channels add exactly nothing, so before
training the model computes what the RGB model computes on the mapped channels, bit for bit: the extra
bands (NIR, SWIR, elevation) can only move the model away from its pretrained behaviour as far as the
training signal asks. The extra kernels are saved with the adapters and folded into one conv for inference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..util.errors import UserError

NEW = -1  # a channel that takes no pretrained kernel: its own zero-initialised trainable kernel


def kernel_map(channels: int, rgb: Sequence[int]) -> tuple[int, ...]:
    """Per input channel, the pretrained kernel it takes: ``rgb`` lists the channel indices that are R, G, B.

    E.g. a 4-band B, G, R, NIR raster read in file order: ``kernel_map(4, [2, 1, 0])`` → ``(2, 1, 0, -1)``.
    """
    if len(rgb) != 3 or len(set(rgb)) != 3 or not all(0 <= c < channels for c in rgb):
        raise UserError(f"the R, G, B channels must be three different indices in 0..{channels - 1}, got {list(rgb)}")
    kernels = [NEW] * channels
    for kernel, channel in enumerate(rgb):
        kernels[channel] = kernel
    return tuple(kernels)


def check_kernels(kernels: Sequence[int]) -> tuple[int, ...]:
    kernels = tuple(int(k) for k in kernels)
    used = [k for k in kernels if k != NEW]
    if not kernels or any(k not in (NEW, 0, 1, 2) for k in kernels) or len(set(used)) != len(used):
        raise UserError(f"band kernels must be 0, 1, 2 (pretrained R, G, B, each at most once) or -1 (new), "
                        f"one per input channel; got {list(kernels)}")
    return kernels


class BandProjection(nn.Module):
    """The patch projection for C channels: the pretrained conv on the mapped channels + a trainable conv on
    the others (zero at start). ``rgb`` is the pretrained ``nn.Conv2d`` itself, so it stays frozen (or is
    fine-tuned) exactly as it would have been."""

    def __init__(self, rgb: nn.Conv2d, kernels: Sequence[int]):
        super().__init__()
        self.kernels = check_kernels(kernels)
        if rgb.in_channels != 3:
            raise UserError(f"the patch embedding takes {rgb.in_channels} channels, not 3: it cannot grow from RGB")
        self.rgb = rgb
        # mapped channels sorted by their kernel, so with all three mapped the frozen conv sees the RGB input
        # in RGB order with the untouched pretrained weight: the same arithmetic as the RGB model
        mapped = sorted((k, c) for c, k in enumerate(self.kernels) if k != NEW)
        self.register_buffer("mapped_channels", torch.tensor([c for _, c in mapped]), persistent=False)
        self.register_buffer("mapped_kernels", torch.tensor([k for k, _ in mapped]), persistent=False)
        new = [c for c, k in enumerate(self.kernels) if k == NEW]
        self.register_buffer("new_channels", torch.tensor(new, dtype=torch.long), persistent=False)
        out, _, kh, kw = rgb.weight.shape
        self.extra = nn.Parameter(torch.zeros(out, len(new), kh, kw, dtype=rgb.weight.dtype))

    @property
    def in_channels(self) -> int:
        return len(self.kernels)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] != self.in_channels:
            raise ValueError(f"input has {x.shape[1]} channels, the patch embedding expects {self.in_channels}")
        weight = self.rgb.weight
        if len(self.mapped_kernels) < 3:
            weight = weight.index_select(1, self.mapped_kernels)
        conv = self.rgb
        out = F.conv2d(x.index_select(1, self.mapped_channels), weight, conv.bias, conv.stride, conv.padding,
                       conv.dilation, conv.groups)
        if self.extra.shape[1]:
            out = out + F.conv2d(x.index_select(1, self.new_channels), self.extra, None, conv.stride, conv.padding,
                                 conv.dilation, conv.groups)
        return out

    @torch.no_grad()
    def merged(self) -> nn.Conv2d:
        """One ``nn.Conv2d`` over all C channels that computes the same (up to float rounding)."""
        conv = self.rgb
        out = nn.Conv2d(self.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                        conv.dilation, conv.groups, conv.bias is not None).to(conv.weight.device, conv.weight.dtype)
        out.weight.zero_()
        out.weight[:, self.mapped_channels] = conv.weight[:, self.mapped_kernels]
        out.weight[:, self.new_channels] = self.extra
        if conv.bias is not None:
            out.bias.copy_(conv.bias)
        return out.requires_grad_(False)


def grow_patch_embedding(vit: nn.Module, kernels: Sequence[int]) -> BandProjection:
    """Replace ``vit.patch_embed.proj`` (a 3-channel conv) by a BandProjection; returns it."""
    proj = vit.patch_embed.proj
    if isinstance(proj, BandProjection):
        raise UserError("the patch embedding has already been grown to more bands")
    if not isinstance(proj, nn.Conv2d):
        raise UserError(f"the backbone's patch embedding is a {type(proj).__name__}, not a convolution: "
                        "it cannot take more bands")
    band_proj = BandProjection(proj, kernels)
    vit.patch_embed.proj = band_proj
    if hasattr(vit.patch_embed, "in_chans"):
        vit.patch_embed.in_chans = band_proj.in_channels
    return band_proj


def band_projection(vit: nn.Module) -> BandProjection | None:
    proj = getattr(getattr(vit, "patch_embed", None), "proj", None)
    return proj if isinstance(proj, BandProjection) else None


def band_kernels(vit: nn.Module) -> list[int] | None:
    """What a saved model records to grow the same embedding again (None: the plain RGB embedding)."""
    proj = band_projection(vit)
    return None if proj is None else list(proj.kernels)


def band_state(vit: nn.Module, prefix: str) -> dict[str, Tensor]:
    """The new bands' kernels under their state-dict names: trainable weights saved with the adapters."""
    return {f"{prefix}{name}.extra": module.extra for name, module in vit.named_modules()
            if isinstance(module, BandProjection)}


def fold_band_projection(vit: nn.Module) -> None:
    """Replace a BandProjection by its merged conv (inference, export): one conv, no index_select."""
    proj = band_projection(vit)
    if proj is not None:
        vit.patch_embed.proj = proj.merged()
