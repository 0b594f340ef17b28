"""What training scores: the head's loss of its raw outputs, and the per-sample loss the Fisher gate squares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from ..model.segmentor import HeadOutputs, Segmentor


def segmentation_loss(model: Segmentor, outputs: Any, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """The batch loss of raw head outputs, optionally with per-pixel weights (B, H, W) (heads/__init__.py)."""
    return model.head.loss(outputs, target, weight)


def fisher_loss(model: Segmentor) -> tuple[nn.Module, Callable[[Any, Tensor], Tensor]]:
    """The module and per-sample loss the gate scores slots with: images → raw head outputs, and the head's
    loss of one image (pixel cross-entropy for the FPN head, the matched losses for Mask2Former)."""
    return HeadOutputs(model), model.head.per_sample_loss
