"""Segmentation losses, including the per-sample loss the Fisher gate squares gradients of."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..heads import has_own_loss
from ..model.segmentor import HeadOutputs, Segmentor

IGNORE_INDEX = 255


def per_sample_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean pixel cross-entropy of each image (B,), ignoring label 255; an all-ignored image gives 0.

    −log p(Y_j | X_j) for sample j, as the empirical Fisher needs it (one image = one sample).
    """
    pixel = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")
    valid = (target != IGNORE_INDEX).flatten(1).sum(1)
    return pixel.flatten(1).sum(1) / valid.clamp(min=1)


def cross_entropy(logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Batch loss: mean over all valid pixels of the batch (mmseg's default); ``weight`` per class, for a
    minority class (buildings in a scene of background) that would otherwise barely move the loss."""
    return F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE_INDEX)


def segmentation_loss(model: Segmentor, outputs: Any, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """The batch loss of raw head outputs: the head's own (Mask2Former) or pixel cross-entropy on the logits."""
    if has_own_loss(model.head):
        return model.head.loss(outputs, target)
    return cross_entropy(model.scores(outputs, target.shape[-2:]), target, weight)


def fisher_loss(model: Segmentor) -> tuple[nn.Module, Callable[[Any, Tensor], Tensor]]:
    """The module and per-sample loss the gate scores slots with: the segmentor and pixel cross-entropy, or,
    for a head with its own loss, the raw head outputs and that head's loss of one image."""
    if has_own_loss(model.head):
        return HeadOutputs(model), model.head.per_sample_loss
    return model, per_sample_cross_entropy
