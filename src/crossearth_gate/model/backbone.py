"""Frozen timm ViT backbones (DINOv2 and other ViTs, SAM's image encoder): building and multi-depth features.

The backbone runs its blocks itself (instead of calling timm's ``forward``) so that the toolbox can
insert its slots into every block, and so that blocks below the lowest trainable slot run without
autograd: backward then stops early, which is where the gate's speed-up comes from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import timm
import torch
from timm.models import is_model_in_modules
from torch import Tensor, nn

from ..toolbox.slots import Toolbox, run_block
from ..util.errors import UserError
from ..weights import RANDOM, WeightsRecord, create_vit
from ..weights.mae import STATISTICS
from .bands import band_projection
from .tokens import token_layout


@dataclass(frozen=True)
class BackboneInfo:
    """What the run records about its backbone (``metrics.json["backbone"]``)."""

    name: str
    weights: str
    embed_dim: int
    depth: int
    patch_size: int
    num_prefix_tokens: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_record: WeightsRecord | None = None  # what served ``weights`` (source, file, sha256)
    gsd: float | None = None  # Scale-MAE's position embedding at this ground-sample distance (None: the model's)

    @property
    def weights_sha256(self) -> str | None:
        """The sha256 of the weights file that served (None: random init, or nothing recorded)."""
        return self.weights_record.sha256 if self.weights_record else None


def default_out_indices(depth: int) -> list[int]:
    """Four evenly spaced depths ending at the last block (0-based), e.g. [2, 5, 8, 11] for 12 blocks."""
    return [max(0, depth * q // 4 - 1) for q in (1, 2, 3, 4)]


class FrozenViT(nn.Module):
    """A timm VisionTransformer whose weights stay frozen and in eval mode, with slot-aware blocks."""

    def __init__(self, vit: nn.Module, info: BackboneInfo, out_indices: list[int] | None = None):
        super().__init__()
        if not hasattr(vit, "blocks") or not hasattr(vit, "patch_embed"):
            raise UserError(f"backbone {info.name} is not a ViT with patch_embed and blocks")
        self.vit = vit
        self.info = info
        self.tokens = token_layout(vit, info.num_prefix_tokens, info.gsd)
        self.out_indices = out_indices or default_out_indices(info.depth)
        bad = [i for i in self.out_indices if not 0 <= i < info.depth]
        if bad:
            raise UserError(f"out_indices {bad} outside 0..{info.depth - 1} for backbone {info.name}")
        self.finetune = False
        self.set_finetune(False)

    @property
    def patch_size(self) -> int:
        return self.info.patch_size

    def set_finetune(self, finetune: bool) -> None:
        """Full fine-tuning baseline: unfreeze every backbone weight (otherwise all stay frozen)."""
        self.finetune = finetune
        self.vit.requires_grad_(finetune)
        if (bands := band_projection(self.vit)) is not None:
            bands.extra.requires_grad_(True)  # new bands' kernels start at zero: they always train

    def train(self, mode: bool = True) -> FrozenViT:
        """Keep the backbone in eval mode always: frozen statistics, no stochastic depth."""
        super().train(mode)
        self.vit.eval()
        return self

    def forward(self, x: Tensor, toolbox: Toolbox | None = None) -> list[Tensor]:
        """Return features (B, C, h, w) after the blocks in ``out_indices``."""
        _, _, height, width = x.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"input {height}x{width} is not a multiple of the patch size {p}")
        grid = (height // p, width // p)
        embedding_trains = any(w.requires_grad for w in self.vit.patch_embed.parameters())
        first_grad = 0 if self.finetune or embedding_trains else (toolbox.lowest_active_layer() if toolbox else None)
        if first_grad is None:
            first_grad = self.info.depth
        vit = self.vit
        with torch.set_grad_enabled(torch.is_grad_enabled() and first_grad == 0):
            tokens = self.tokens.embed(vit, x)
        outputs: list[Tensor] = []
        last = max(self.out_indices)
        for i, block in enumerate(vit.blocks[: last + 1]):
            with torch.set_grad_enabled(torch.is_grad_enabled() and i >= first_grad):
                tokens = run_block(block, tokens, i, grid, self.tokens.num_prefix, toolbox)
            if i in self.out_indices:
                outputs.append(self.tokens.features(vit, tokens, grid))
        return outputs


def timm_kwargs(name: str, img_size: int, model_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """``timm.create_model`` arguments: ViTs at the crop size with dynamic sizes; SAM at its own grid."""
    if is_model_in_modules(name, ["vision_transformer_sam"]):
        return {**(model_kwargs or {}), "num_classes": 0}
    return {**(model_kwargs or {}), "img_size": img_size, "dynamic_img_size": True, "num_classes": 0}


def build_backbone(
    name: str,
    weights: str = RANDOM,
    img_size: int = 224,
    out_indices: list[int] | None = None,
    model_kwargs: dict[str, Any] | None = None,
    gsd: float | None = None,
) -> FrozenViT:
    """Build a frozen timm ViT by name; ``weights`` is ``none``, ``hub``, ``auto`` or a checkpoint file.

    ``model_kwargs`` go to ``timm.create_model`` (e.g. ``depth`` for a shallower model in tests). SAM keeps
    its pre-training grid unless ``model_kwargs`` sets ``img_size`` (its checkpoints' absolute positions and
    relative-position tables are sized for it); any input that is a multiple of the patch size runs through
    it, positions resampled as timm's own SAM forward does. ``gsd`` replaces the model's position embedding by
    Scale-MAE's sin-cos of ground distance (metres per pixel of the input).
    """
    if name not in timm.list_models():
        raise UserError(f"unknown timm model {name!r} (see timm.list_models('*dinov2*'))")
    kwargs = timm_kwargs(name, img_size, model_kwargs)
    vit, record = create_vit(name, weights, kwargs)
    cfg = getattr(vit, "pretrained_cfg", {}) or {}
    # the statistics the weights were trained with, where their layout says (SatMAE, Scale-MAE); else timm's
    mean, std = STATISTICS.get(record.layout, (cfg.get("mean", (0.485, 0.456, 0.406)),
                                               cfg.get("std", (0.229, 0.224, 0.225))))
    patch = vit.patch_embed.patch_size
    info = BackboneInfo(
        name=name,
        weights=record.requested,
        embed_dim=vit.embed_dim,
        depth=len(vit.blocks),
        patch_size=patch[0] if isinstance(patch, tuple) else patch,
        num_prefix_tokens=getattr(vit, "num_prefix_tokens", 0),
        mean=tuple(mean),
        std=tuple(std),
        weights_record=record,
        gsd=gsd,
    )
    return FrozenViT(vit, info, out_indices)
