"""Read a backbone checkpoint in any layout users hold and return it in timm's key layout.

Layouts: official DINOv2 ``.pth``, timm ``.safetensors``/``.pth``, Hugging Face ``Dinov2Model`` (``.safetensors``
or ``pytorch_model.bin``, with or without the ``dinov2.`` prefix, registers or not), ONNX exports of a
Hugging Face Dinov2 model, the official SAM, SatMAE and Scale-MAE releases. Loading into a model is strict:
every key and shape must match.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

from ..util.errors import UserError
from .huggingface import huggingface_to_official, is_huggingface
from .mae import mae_layout, mae_to_timm
from .official import official_to_timm
from .sam import is_sam, sam_to_timm


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a ``.pth``/``.pt``/``.bin`` or ``.safetensors`` checkpoint; unwrap ``model``/``state_dict`` nesting."""
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            # MAE-style training checkpoints (SatMAE, Scale-MAE) store their argparse options beside the weights
            with torch.serialization.safe_globals([argparse.Namespace]):
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


def read_backbone_weights(path: Path, uses_no_embed_class: bool) -> tuple[dict[str, Tensor], str]:
    """Any supported file → (timm-layout state dict, name of the layout it was in)."""
    if path.suffix == ".onnx":
        if not path.is_file():
            raise UserError(f"{path}: checkpoint file not found")
        from .onnx_export import onnx_to_huggingface

        official, layout = huggingface_to_official(onnx_to_huggingface(path), str(path)), "onnx"
    else:
        state = read_state_dict(path)
        if is_sam(state):
            return sam_to_timm(state, str(path)), "sam"
        if (mae := mae_layout(state)) is not None:
            return mae_to_timm(state, mae, str(path)), mae
        if is_huggingface(state):
            official, layout = huggingface_to_official(state, str(path)), "huggingface"
        else:
            official, layout = state, "official" if "mask_token" in state or "register_tokens" in state else "timm"
    return official_to_timm(official, uses_no_embed_class), layout


def load_into(vit: nn.Module, state: dict[str, Tensor], origin: str) -> None:
    """Load strictly: keys checked, position embeddings resampled to the model's grid, shapes checked."""
    expected = vit.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {', '.join(unexpected[:3])})")
        raise UserError(f"{origin}: checkpoint does not match the model: {'; '.join(parts)}")
    state = dict(state)
    if "pos_embed" in state and state["pos_embed"].shape != expected["pos_embed"].shape:
        prefix = 0 if getattr(vit, "no_embed_class", False) else vit.num_prefix_tokens
        try:
            state["pos_embed"] = resample_abs_pos_embed(
                state["pos_embed"], new_size=list(vit.patch_embed.grid_size), num_prefix_tokens=prefix
            )
        except Exception as err:
            raise UserError(f"{origin}: cannot resample pos_embed {tuple(state['pos_embed'].shape)}") from err
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise UserError(
                f"{origin}: checkpoint does not match the model: {key} has shape {tuple(value.shape)}, "
                f"expected {tuple(expected[key].shape)}"
            )
    vit.load_state_dict(state, strict=True)


def load_checkpoint(vit: nn.Module, path: Path) -> str:
    """Load a local checkpoint of any supported layout into ``vit``; return the layout's name."""
    state, layout = read_backbone_weights(path, bool(getattr(vit, "no_embed_class", False)))
    load_into(vit, state, str(path))
    return layout
