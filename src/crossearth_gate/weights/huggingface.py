"""Hugging Face ``Dinov2Model`` / ``Dinov2WithRegistersModel`` checkpoints → the official DINOv2 key layout.

Separate query/key/value projections are fused into one ``qkv`` (rows q, k, v: the order timm and the
official code split them in), LayerScale ``lambda1`` becomes ``gamma``, SwiGLU ``weights_in``/``weights_out``
become ``w12``/``w3``. Task models (``Dinov2ForImageClassification``) keep the backbone under ``dinov2.``:
that prefix is stripped and their task-specific keys are dropped.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from ..util.errors import UserError

PATCH_KEY = "embeddings.patch_embeddings.projection.weight"
PREFIX = "dinov2."

_RENAMES = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.mask_token$", "mask_token"),
    (r"^embeddings\.register_tokens$", "register_tokens"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.norm([12])\.", r"blocks.\1.norm\2."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"^encoder\.layer\.(\d+)\.mlp\.fc([12])\.", r"blocks.\1.mlp.fc\2."),
    (r"^encoder\.layer\.(\d+)\.mlp\.weights_in\.", r"blocks.\1.mlp.w12."),
    (r"^encoder\.layer\.(\d+)\.mlp\.weights_out\.", r"blocks.\1.mlp.w3."),
    (r"^layernorm\.", "norm."),
]
_QKV = re.compile(r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$")


def is_huggingface(state: dict[str, Tensor]) -> bool:
    return PATCH_KEY in state or PREFIX + PATCH_KEY in state


def huggingface_to_official(state: dict[str, Tensor], origin: str = "checkpoint") -> dict[str, Tensor]:
    """Rename and fuse a Hugging Face Dinov2 state dict; unknown keys are an error, never dropped silently."""
    if PREFIX + PATCH_KEY in state:
        state = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    unknown = []
    for key, value in state.items():
        match = _QKV.match(key)
        if match:
            qkv.setdefault((int(match[1]), match[3]), {})[match[2]] = value
            continue
        for pattern, replacement in _RENAMES:
            if re.match(pattern, key):
                out[re.sub(pattern, replacement, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise UserError(f"{origin}: unknown Hugging Face Dinov2 keys ({len(unknown)}, e.g. {', '.join(unknown[:3])})")
    for (layer, kind), parts in sorted(qkv.items()):
        missing = [p for p in ("query", "key", "value") if p not in parts]
        if missing:
            raise UserError(f"{origin}: layer {layer} has no attention {'/'.join(missing)} {kind}")
        out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return out
