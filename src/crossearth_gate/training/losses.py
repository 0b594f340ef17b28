"""Segmentation losses, including the per-sample loss the Fisher gate squares gradients of."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

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
