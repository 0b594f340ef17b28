"""The official DINOv2 key layout (``dinov2_vits14_pretrain.pth``) → timm's VisionTransformer keys.

timm's layout is the official one minus the mask token, with registers renamed and SwiGLU's ``w12``/``w3``
called ``fc1``/``fc2``; a timm-layout state dict passes through unchanged.
"""

from __future__ import annotations

import re

from torch import Tensor


def official_to_timm(state: dict[str, Tensor], uses_no_embed_class: bool) -> dict[str, Tensor]:
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
