"""Decoder heads. Registry by name so new heads (e.g. Mask2Former) plug in without touching callers."""

from __future__ import annotations

from torch import nn

from ..errors import UserError
from .fpn import FPNHead

HEADS: dict[str, type[nn.Module]] = {"fpn": FPNHead}


def build_head(name: str, in_channels: int, num_levels: int, num_classes: int, channels: int) -> nn.Module:
    if name not in HEADS:
        raise UserError(f"unknown head {name!r}; choose from {sorted(HEADS)}")
    return HEADS[name](in_channels, num_levels, num_classes, channels)
