"""How a ViT lays out its tokens, so one block loop serves every backbone.

timm's ``VisionTransformer`` (DINOv2, SatMAE, plain ViTs; Scale-MAE with its own position embedding) keeps
a flat (B, N, C) sequence with class/register tokens first and a final norm; SAM's image encoder keeps a
(B, h, w, C) grid, no class token, and no per-token final norm (its conv neck changes the width, so features
are taken before it, as timm's ``forward_intermediates`` does). The embedding steps are the models' own,
in their order.
"""

from __future__ import annotations

import torch
from timm.layers import resample_abs_pos_embed_nhwc
from timm.models import VisionTransformerSAM
from torch import Tensor, nn

from ..util.errors import UserError
from .positions import gsd_sincos


class SequenceTokens:
    """timm ``VisionTransformer``: patch tokens after ``num_prefix`` class/register tokens."""

    def __init__(self, num_prefix: int):
        self.num_prefix = num_prefix

    def embed(self, vit: nn.Module, x: Tensor) -> Tensor:
        return vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))

    def features(self, vit: nn.Module, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, C, h, w) from the normed patch tokens."""
        patches = vit.norm(tokens)[:, self.num_prefix :]
        return patches.transpose(1, 2).reshape(tokens.shape[0], -1, *grid)


class GSDSequenceTokens(SequenceTokens):
    """Scale-MAE: a class token, then patches whose positions are a sin-cos of their ground distance."""

    def __init__(self, vit: nn.Module, num_prefix: int, gsd: float):
        super().__init__(num_prefix)
        if num_prefix != 1 or getattr(vit, "cls_token", None) is None or not getattr(vit, "dynamic_img_size", False):
            raise UserError("model.gsd (Scale-MAE's position embedding) needs a ViT with one class token and no "
                            "registers, built with dynamic_img_size")
        if not gsd > 0:
            raise UserError(f"model.gsd must be > 0 (metres per pixel), got {gsd}")
        self.gsd = gsd

    def embed(self, vit: nn.Module, x: Tensor) -> Tensor:
        patches = vit.patch_embed(x)  # (B, h, w, C): dynamic_img_size keeps the grid
        b, h, w, c = patches.shape
        positions = gsd_sincos(h, w, c, self.gsd).to(device=patches.device, dtype=patches.dtype)
        tokens = torch.cat([vit.cls_token.expand(b, -1, -1), patches.reshape(b, h * w, c) + positions], dim=1)
        return vit.norm_pre(vit.pos_drop(tokens))


class GridTokens:
    """SAM's image encoder: a (B, h, w, C) grid; absolute positions resampled to the input's grid."""

    num_prefix = 0

    def embed(self, vit: nn.Module, x: Tensor) -> Tensor:
        tokens = vit.patch_embed(x)
        if vit.pos_embed is not None:
            tokens = tokens + resample_abs_pos_embed_nhwc(vit.pos_embed, tokens.shape[1:3])
        return vit.norm_pre(vit.patch_drop(vit.pos_drop(tokens)))

    def features(self, vit: nn.Module, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        return tokens.permute(0, 3, 1, 2)


def is_sam(vit: nn.Module) -> bool:
    return isinstance(vit, VisionTransformerSAM)


def token_layout(vit: nn.Module, num_prefix: int, gsd: float | None = None) -> SequenceTokens | GridTokens:
    if is_sam(vit):
        if gsd is not None:
            raise UserError("model.gsd (Scale-MAE's position embedding) does not apply to SAM")
        return GridTokens()
    return SequenceTokens(num_prefix) if gsd is None else GSDSequenceTokens(vit, num_prefix, gsd)
