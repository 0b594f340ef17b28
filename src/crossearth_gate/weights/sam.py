"""The official Segment Anything checkpoints (``sam_vit_b_01ec64.pth``, ...) → timm's ``samvit_*`` keys.

The image encoder sits under ``image_encoder.`` with its MLP as ``lin1``/``lin2`` (timm: ``fc1``/``fc2``);
the prompt encoder, mask decoder and pixel statistics are not part of the backbone and are dropped. Any
other key is an error.
"""

from __future__ import annotations

import re

from torch import Tensor

from ..util.errors import UserError

ENCODER = "image_encoder."
_NOT_BACKBONE = ("prompt_encoder.", "mask_decoder.", "pixel_mean", "pixel_std")


def is_sam(state: dict[str, Tensor]) -> bool:
    return ENCODER + "patch_embed.proj.weight" in state


def sam_to_timm(state: dict[str, Tensor], origin: str) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        if key.startswith(ENCODER):
            out[re.sub(r"\.mlp\.lin([12])\.", r".mlp.fc\1.", key[len(ENCODER) :])] = value
        elif not key.startswith(_NOT_BACKBONE):
            unknown.append(key)
    if unknown:
        raise UserError(f"{origin}: unknown SAM keys ({len(unknown)}, e.g. {', '.join(unknown[:3])})")
    return out
