"""Teacher pseudo-labels, their per-image confidence weight, and the weighted per-sample loss.

No-data target pixels (pure black: crop padding, scanner borders) get no pseudo-label (255) and do
not count towards the weight. The weight of an image is the share of its pseudo-labelled pixels
whose teacher confidence exceeds τ (DACS).

The Fisher gate scores a per-sample loss ``loss(outputs, target)``. For pseudo-labelled images that
loss is the DA task's own, w_j·loss_j(outputs_j, pseudo_j), so its squared per-sample gradient is
w_j²·g_j². Labels and weights travel in one float tensor (B, 2, H, W) (labels are small integers,
exact in float) so the gate's slicing, looping and vmap need no special case.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..util.labels import IGNORE_INDEX

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


def pseudo_labels(probabilities: Tensor, valid: Tensor, threshold: float) -> PseudoLabels:
    """Argmax labels and the DACS per-image weight from the teacher's class probabilities (B, C, H, W)."""
    confidence, labels = probabilities.max(1)
    labels = labels.masked_fill(~valid, IGNORE_INDEX)
    sure = ((confidence > threshold) & valid).flatten(1).sum(1)
    weight = sure / valid.flatten(1).sum(1).clamp(min=1)
    return PseudoLabels(labels, confidence, valid, weight.float())


def pack_targets(labels: Tensor, weight: Tensor) -> Tensor:
    """(B, H, W) labels + (B,) weights → one float tensor (B, 2, H, W) for the gate's per-sample loss."""
    w = weight.to(torch.float32).view(-1, 1, 1).expand_as(labels)
    return torch.stack([labels.to(torch.float32), w], dim=1)


class Weighted:
    """``base`` per-sample loss on packed (labels, weight) targets: w_j · base(outputs_j, labels_j), shape (B,)."""

    def __init__(self, base: Callable[[Any, Tensor], Tensor]):
        self.base = base

    def __call__(self, outputs: Any, packed: Tensor) -> Tensor:
        return packed[:, 1, 0, 0] * self.base(outputs, packed[:, 0].round().long())
