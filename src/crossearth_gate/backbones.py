"""Frozen timm ViT backbones: building, weight loading (hub / local file / none) and multi-depth features.

The backbone runs its blocks itself (instead of calling timm's ``forward``) so that the toolbox can
insert its slots into every block, and so that blocks below the lowest trainable slot run without
autograd: backward then stops early, which is where the gate's speed-up comes from.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

from .errors import UserError
from .toolbox.slots import Toolbox, run_block

log = logging.getLogger(__name__)

RANDOM_WEIGHTS = "none"
HUB_WEIGHTS = "hub"


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

    def train(self, mode: bool = True) -> FrozenViT:
        """Keep the backbone in eval mode always: frozen statistics, no stochastic depth."""
        super().train(mode)
        self.vit.eval()
        return self

    def forward(self, x: Tensor, toolbox: Toolbox | None = None) -> list[Tensor]:
        """Return features (B, C, h, w) after the blocks in ``out_indices``."""
        b, _, height, width = x.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"input {height}x{width} is not a multiple of the patch size {p}")
        grid = (height // p, width // p)
        first_grad = 0 if self.finetune else (toolbox.lowest_active_layer() if toolbox else None)
        if first_grad is None:
            first_grad = self.info.depth
        vit = self.vit
        with torch.set_grad_enabled(torch.is_grad_enabled() and first_grad == 0):
            tokens = vit.patch_embed(x)
            tokens = vit._pos_embed(tokens)
            tokens = vit.norm_pre(tokens)
        outputs: list[Tensor] = []
        last = max(self.out_indices)
        for i, block in enumerate(vit.blocks[: last + 1]):
            with torch.set_grad_enabled(torch.is_grad_enabled() and i >= first_grad):
                tokens = run_block(block, tokens, i, grid, self.info.num_prefix_tokens, toolbox)
            if i in self.out_indices:
                feat = vit.norm(tokens)[:, self.info.num_prefix_tokens :]
                outputs.append(feat.transpose(1, 2).reshape(b, -1, *grid))
        return outputs


def build_backbone(
    name: str,
    weights: str = RANDOM_WEIGHTS,
    img_size: int = 224,
    out_indices: list[int] | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> FrozenViT:
    """Build a frozen timm ViT by name with weights from the hub, a local checkpoint, or random init.

    ``model_kwargs`` go to ``timm.create_model`` (e.g. ``depth`` for a shallower model in tests).
    """
    if name not in timm.list_models():
        raise UserError(f"unknown timm model {name!r} (see timm.list_models('*dinov2*'))")
    kwargs = {**(model_kwargs or {}), "img_size": img_size, "dynamic_img_size": True, "num_classes": 0}
    if weights == HUB_WEIGHTS:
        try:
            vit = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as err:  # network, missing hub entry, corrupt cache
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UserError(f"could not fetch hub weights for {name}: {first}") from err
    else:
        vit = timm.create_model(name, pretrained=False, **kwargs)
        if weights == RANDOM_WEIGHTS:
            log.warning(
                "backbone %s has RANDOM weights (none given or reachable): results say nothing about pretrained "
                "features; use --weights hub or a checkpoint file",
                name,
            )
        else:
            load_checkpoint(vit, Path(weights))
    cfg = getattr(vit, "pretrained_cfg", {}) or {}
    patch = vit.patch_embed.patch_size
    info = BackboneInfo(
        name=name,
        weights=weights if weights in (RANDOM_WEIGHTS, HUB_WEIGHTS) else str(Path(weights).resolve()),
        embed_dim=vit.embed_dim,
        depth=len(vit.blocks),
        patch_size=patch[0] if isinstance(patch, tuple) else patch,
        num_prefix_tokens=vit.num_prefix_tokens,
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
    )
    return FrozenViT(vit, info, out_indices)


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a ``.pth``/``.pt`` or ``.safetensors`` checkpoint; unwrap ``model``/``state_dict`` nesting."""
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"{path}: unreadable checkpoint ({type(err).__name__}: {err})".splitlines()[0]) from err
    for key in ("model", "state_dict", "teacher"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"{path}: not a state dict of tensors")
    for prefix in ("module.", "backbone."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def dinov2_to_timm(state: dict[str, Tensor], uses_no_embed_class: bool) -> dict[str, Tensor]:
    """Rename the official DINOv2 key layout to timm's (registers, SwiGLU, no mask token)."""
    state = dict(state)
    state.pop("mask_token", None)
    if "register_tokens" in state:
        state["reg_token"] = state.pop("register_tokens")
        if uses_no_embed_class and "pos_embed" in state:
            # official: cls gets pos_embed[0]; timm reg models keep cls/registers outside pos_embed
            state["cls_token"] = state["cls_token"] + state["pos_embed"][:, :1]
            state["pos_embed"] = state["pos_embed"][:, 1:]
    renamed = {}
    for key, value in state.items():
        key = re.sub(r"(blocks\.\d+\.mlp)\.w12\.", r"\1.fc1.", key)
        key = re.sub(r"(blocks\.\d+\.mlp)\.w3\.", r"\1.fc2.", key)
        renamed[key] = value
    return renamed


def load_checkpoint(vit: nn.Module, path: Path) -> None:
    """Load a local checkpoint strictly: keys checked, position embeddings resampled to the model's grid."""
    state = dinov2_to_timm(read_state_dict(path), bool(getattr(vit, "no_embed_class", False)))
    expected = vit.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {', '.join(unexpected[:3])})")
        raise UserError(f"{path}: checkpoint does not match the model: {'; '.join(parts)}")
    if "pos_embed" in state and state["pos_embed"].shape != expected["pos_embed"].shape:
        prefix = 0 if getattr(vit, "no_embed_class", False) else vit.num_prefix_tokens
        grid = vit.patch_embed.grid_size
        try:
            state["pos_embed"] = resample_abs_pos_embed(
                state["pos_embed"], new_size=list(grid), num_prefix_tokens=prefix
            )
        except Exception as err:
            raise UserError(f"{path}: cannot resample pos_embed {tuple(state['pos_embed'].shape)}") from err
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise UserError(
                f"{path}: checkpoint does not match the model: {key} has shape {tuple(value.shape)}, "
                f"expected {tuple(expected[key].shape)}"
            )
    vit.load_state_dict(state, strict=True)
