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


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Batch loss: mean over all valid pixels of the batch (mmseg's default)."""
    return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)


def weighted_cross_entropy(logits: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Σ w_p · CE_p / (number of labelled pixels) over the batch, w (B, H, W) per pixel: weights scale each
    pixel's term, never the denominator (mmseg's reduction of a pixel-weighted loss, without its ignored pixels)."""
    pixel = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")
    valid = target != IGNORE_INDEX
    return (pixel * weight).sum() / valid.sum().clamp(min=1)


def image_weights(weight: Tensor, target: Tensor) -> Tensor:
    """(B,) mean of the per-pixel weights (B, H, W) over each image's labelled pixels (0 for an image with
    none): the per-image form of a pixel-weighted loss, for a head whose loss is per image (Mask2Former)."""
    valid = target != IGNORE_INDEX
    return (weight * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)


def weighted_segmentation_loss(model: Segmentor, outputs: Any, target: Tensor, weight: Tensor) -> Tensor:
    """The batch loss with per-pixel weights (B, H, W): per pixel for cross-entropy; for a head with its own
    (matched, per-image) loss, each image's loss times its mean pixel weight, averaged over the batch."""
    if has_own_loss(model.head):
        return (image_weights(weight, target) * model.head.per_sample_loss(outputs, target)).mean()
    return weighted_cross_entropy(model.scores(outputs, target.shape[-2:]), target, weight)


def segmentation_loss(model: Segmentor, outputs: Any, target: Tensor) -> Tensor:
    """The batch loss of raw head outputs: the head's own (Mask2Former) or pixel cross-entropy on the logits."""
    if has_own_loss(model.head):
        return model.head.loss(outputs, target)
    return cross_entropy(model.scores(outputs, target.shape[-2:]), target)


def fisher_loss(model: Segmentor) -> tuple[nn.Module, Callable[[Any, Tensor], Tensor]]:
    """The module and per-sample loss the gate scores slots with: the segmentor and pixel cross-entropy, or,
    for a head with its own loss, the raw head outputs and that head's loss of one image."""
    if has_own_loss(model.head):
        return HeadOutputs(model), model.head.per_sample_loss
    return model, per_sample_cross_entropy
