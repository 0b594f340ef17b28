"""How a ViT lays out its tokens, so one block loop serves every backbone.

timm's ``VisionTransformer`` (DINOv2, Scale-MAE, SatMAE, plain ViTs) keeps a flat (B, N, C) sequence with
class/register tokens first and a final norm; SAM's image encoder keeps a (B, h, w, C) grid, no class token,
and no per-token final norm (its conv neck changes the width, so features are taken before it, as timm's
``forward_intermediates`` does). The embedding steps are the models' own, in their order.
"""

from __future__ import annotations

from timm.layers import resample_abs_pos_embed_nhwc
from timm.models import VisionTransformerSAM
from torch import Tensor, nn


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


def token_layout(vit: nn.Module, num_prefix: int) -> SequenceTokens | GridTokens:
    return GridTokens() if is_sam(vit) else SequenceTokens(num_prefix)
