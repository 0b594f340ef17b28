"""Pixel cross-entropy in the forms the heads need: per batch, per image (the Fisher's samples), pixel-weighted
(DACS's mixed images), and the per-image reduction of pixel weights for a head whose loss is per image."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..util.labels import IGNORE_INDEX


def per_sample_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean pixel cross-entropy of each image (B,), ignoring label 255; an all-ignored image gives 0.

    −log p(Y_j | X_j) for sample j, as the empirical Fisher needs it (one image = one sample).
    """
    pixel = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")
    valid = (target != IGNORE_INDEX).flatten(1).sum(1)
    return pixel.flatten(1).sum(1) / valid.clamp(min=1)


def cross_entropy(logits: Tensor, target: Tensor, class_weight: Tensor | None = None) -> Tensor:
    """Batch loss: mean over all valid pixels of the batch (mmseg's default); ``class_weight`` per class, for a
    minority class (buildings in a scene of background) that would otherwise barely move the loss."""
    return F.cross_entropy(logits, target, weight=class_weight, ignore_index=IGNORE_INDEX)


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
