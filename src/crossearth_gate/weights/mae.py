"""Masked-autoencoder checkpoints of the geospatial ViT-L/16s → timm's VisionTransformer keys.

* **SatMAE** (fMoW RGB, ``sustainlab-group/SatMAE``): the MAE pre-training file holds the encoder under timm's
  own names plus the MAE decoder (``mask_token``, ``decoder_*``); its fine-tuning file holds the encoder with
  ``fc_norm`` (the last LayerNorm, applied after pooling there) in place of ``norm`` and a classifier ``head``.
* **Scale-MAE** (``bair-climate-initiative/scale-mae``): the same encoder names; the decoder side adds
  ``mask_token_decoder``, an FPN (``fpn.*``) and FCN heads (``fcn*``). Its encoder does not use the stored
  ``pos_embed`` but a sin-cos embedding of the grid scaled by the ground-sample distance (``model.gsd``).

The encoder is kept, the decoder dropped; any other key is an error (never silently dropped), and missing
keys are reported by the strict load that follows.
"""

from __future__ import annotations

import re

from torch import Tensor

from ..util.errors import UserError

SATMAE = "satmae"
SATMAE_FINETUNED = "satmae-finetuned"
SCALEMAE = "scalemae"

# what the encoders were pre-trained on: SatMAE normalises with fMoW-RGB statistics (its util/datasets.py),
# Scale-MAE with ImageNet's (as torchgeo's ScaleMAE transforms do)
STATISTICS = {
    SATMAE: ((0.4182007312774658, 0.4214799106121063, 0.3991275727748871),
             (0.28774282336235046, 0.27541765570640564, 0.2764017581939697)),
    SCALEMAE: ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
STATISTICS[SATMAE_FINETUNED] = STATISTICS[SATMAE]

_ENCODER = re.compile(
    r"^(cls_token|pos_embed|patch_embed\.proj\.(weight|bias)|norm\.(weight|bias)"
    r"|blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias))$"
)
_DECODERS = {
    SATMAE: ("mask_token", "decoder_"),
    SATMAE_FINETUNED: ("head.",),
    SCALEMAE: ("mask_token", "decoder_", "fpn.", "fcn.", "fcn_high.", "fcn_low.", "pos_emb_projection."),
}


def mae_layout(state: dict[str, Tensor]) -> str | None:
    """Which of these layouts ``state`` is in (None: none of them)."""
    if "mask_token_decoder" in state or any(k.startswith(("fpn.", "fcn")) for k in state):
        return SCALEMAE
    if "decoder_embed.weight" in state:
        return SATMAE
    if "fc_norm.weight" in state and "norm.weight" not in state and "blocks.0.attn.qkv.weight" in state:
        return SATMAE_FINETUNED
    return None


def mae_to_timm(state: dict[str, Tensor], layout: str, origin: str) -> dict[str, Tensor]:
    """The encoder of a ``layout`` checkpoint under timm's names."""
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        if layout == SATMAE_FINETUNED and key.startswith("fc_norm."):
            key = "norm." + key[len("fc_norm.") :]
        if _ENCODER.match(key):
            out[key] = value
        elif not key.startswith(_DECODERS[layout]):
            unknown.append(key)
    if unknown:
        raise UserError(f"{origin}: unknown {layout} keys ({len(unknown)}, e.g. {', '.join(unknown[:3])})")
    return out
