"""Tiny models built in milliseconds on a CPU: timm ViTs of every kind the backbone code handles, a frozen
backbone, and a saved run-like model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from crossearth_gate.model.artefacts import save_trainable, spec_of
from crossearth_gate.model.backbone import BackboneInfo, FrozenViT, build_backbone
from crossearth_gate.model.segmentor import Segmentor
from crossearth_gate.toolbox.slots import ToolboxConfig
from support.tiny import tiny_model

_VIT = tiny_model("vit")
TINY_WIDTH: int = _VIT["embed_dim"]
TINY_DEPTH: int = _VIT["depth"]

# name -> (timm architecture, patch size, extra timm kwargs)
TINY_KINDS: dict[str, tuple[str, int, dict[str, Any]]] = {
    "dinov2": ("vit_small_patch14_dinov2", 14, {}),  # LayerScale, class token
    "plain": ("vit_small_patch16_224", 16, {}),  # no LayerScale, qkv bias
    "reg": ("vit_small_patch14_reg4_dinov2", 14, {}),  # 4 register tokens, no_embed_class
    "qknorm": ("vit_small_patch16_224", 16, {"qk_norm": True, "init_values": 1e-5}),
}


def tiny_timm_vit(kind: str = "dinov2", img_size: int | None = None, seed: int = 0, **kwargs: Any) -> nn.Module:
    """A randomly initialised timm ViT of the given kind, shaped as tiny.yaml's ``models.vit``."""
    arch, patch, extra = TINY_KINDS[kind]
    args: dict[str, Any] = {
        "img_size": img_size or 2 * patch,
        **_VIT,
        "dynamic_img_size": True,
        "num_classes": 0,
        **extra,
        **kwargs,
    }
    torch.manual_seed(seed)
    vit = timm.create_model(arch, pretrained=False, **args)
    return vit.eval()


def randomise_layerscale(vit: nn.Module, seed: int = 1) -> None:
    """Set LayerScale gammas to O(1) values so that mistakes in applying them are not hidden by 1e-5."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in vit.named_parameters():
            if name.endswith(".gamma"):
                param.copy_(0.5 + torch.rand(param.shape, generator=gen))


def info_of(vit: nn.Module, name: str) -> BackboneInfo:
    """The BackboneInfo that ``build_backbone`` would record for ``vit``."""
    patch = vit.patch_embed.patch_size
    return BackboneInfo(
        name=name,
        weights="none",
        embed_dim=vit.embed_dim,
        depth=len(vit.blocks),
        patch_size=patch[0] if isinstance(patch, tuple) else patch,
        num_prefix_tokens=vit.num_prefix_tokens,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )


def tiny_backbone(kind: str = "dinov2", out_indices: list[int] | None = None, seed: int = 0,
                  layerscale: bool = True, **kwargs: Any) -> FrozenViT:
    """A tiny frozen backbone (``build_backbone`` cannot pass width/depth through to timm)."""
    vit = tiny_timm_vit(kind, seed=seed, **kwargs)
    if layerscale:
        randomise_layerscale(vit, seed + 1)
    return FrozenViT(vit, info_of(vit, TINY_KINDS[kind][0]), out_indices or list(range(TINY_DEPTH)))


def perturb(module: nn.Module, seed: int = 0, std: float = 0.05) -> None:
    """Add seeded Gaussian noise to every parameter (zero-initialised up-projections included)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * std)


def images(height: int, width: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Seeded random images (B, 3, H, W)."""
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def saved_tiny_model(folder: Path, window: int = 32, active: list[str] | None = None) -> Path:
    """A run-like folder with timm's ``test_vit`` model (patch 16), built and saved in milliseconds."""
    torch.manual_seed(0)
    model = Segmentor(build_backbone("test_vit", "none", window), 3, ToolboxConfig(), "fpn", 16)
    model.toolbox.set_active(active or ["spatial.0", "semantic.2"])
    folder.mkdir(parents=True, exist_ok=True)
    spec = spec_of(model, ["a", "b", "c"], [[0, 0, 0], [255, 0, 0], [0, 255, 0]], 0, window, "fpn", 16)
    return save_trainable(folder / "trainable.safetensors", model, spec)
