"""Teacher pseudo-labels, their per-image confidence weight, and the weighted per-sample loss.

No-data target pixels (pure black: crop padding, scanner borders) get no pseudo-label (255) and do
not count towards the weight. The weight of an image is the share of its pseudo-labelled pixels
whose teacher confidence exceeds τ (DACS).

The Fisher gate scores a per-sample loss ``loss(logits, target)``. For pseudo-labelled images that
loss is the DA task's own, w_j·CE(logits_j, pseudo_j), so its squared per-sample gradient is
w_j²·g_j². Labels and weights travel in one float tensor (B, 2, H, W) (labels are small integers,
exact in float) so the gate's slicing, looping and vmap need no special case.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.catalog import IGNORE_INDEX
from ..training.losses import per_sample_cross_entropy

BLACK = 0.5 / 255  # raw RGB below half a grey level in every band counts as no data


@dataclass(frozen=True)
class PseudoLabels:
    labels: Tensor  # (B, H, W) long, 255 where the target pixel has no data
    confidence: Tensor  # (B, H, W) the teacher's max softmax probability
    valid: Tensor  # (B, H, W) bool, pixels that carry a pseudo-label
    weight: Tensor  # (B,) share of valid pixels with confidence > τ (0 for an image without data)

    @property
    def mean_confidence(self) -> float:
        """Mean teacher confidence over the valid pixels of the batch (the DA training curve)."""
        return float(self.confidence[self.valid].mean()) if self.valid.any() else float("nan")


def has_data(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """(B, H, W) bool: False where the normalised image is pure black in raw RGB."""
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images * s + m).amax(1) > BLACK


def pseudo_labels(logits: Tensor, valid: Tensor, threshold: float) -> PseudoLabels:
    """Argmax labels and the DACS per-image weight from teacher logits (B, C, H, W)."""
    confidence, labels = F.softmax(logits.float(), dim=1).max(1)
    labels = labels.masked_fill(~valid, IGNORE_INDEX)
    sure = ((confidence > threshold) & valid).flatten(1).sum(1)
    weight = sure / valid.flatten(1).sum(1).clamp(min=1)
    return PseudoLabels(labels, confidence, valid, weight.float())


def pack_targets(labels: Tensor, weight: Tensor) -> Tensor:
    """(B, H, W) labels + (B,) weights → one float tensor (B, 2, H, W) for the gate's per-sample loss."""
    w = weight.to(torch.float32).view(-1, 1, 1).expand_as(labels)
    return torch.stack([labels.to(torch.float32), w], dim=1)


def weighted_cross_entropy(logits: Tensor, packed: Tensor) -> Tensor:
    """w_j · (mean pixel CE of image j over its non-ignored pixels), shape (B,)."""
    return packed[:, 1, 0, 0] * per_sample_cross_entropy(logits, packed[:, 0].round().long())
