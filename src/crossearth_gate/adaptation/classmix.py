"""ClassMix: paste the pixels of half the classes of a source image onto a target image.

The mixed label is the source label where pasted and the teacher's pseudo-label elsewhere. Source
pixels labelled 255 belong to no class, so they are never pasted: an ignored pixel never lends its
image to the mix, and the target's own ignored pixels (no pseudo-label) stay 255. The mixed pixels'
loss weights follow the same mask (DACS): 1 where the source's ground truth was pasted, the target
image's confidence weight elsewhere, so an unsure teacher never switches off the pasted ground truth.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..util.labels import IGNORE_INDEX


def classmix_masks(source_labels: Tensor, generator: torch.Generator) -> Tensor:
    """(B, H, W) bool: per image, the pixels of ceil(n/2) of its n present classes, chosen at random."""
    masks = torch.zeros_like(source_labels, dtype=torch.bool)
    for i, label in enumerate(source_labels):
        classes = label.unique()
        classes = classes[classes != IGNORE_INDEX]
        if not len(classes):
            continue
        order = torch.randperm(len(classes), generator=generator)
        chosen = classes[order[: (len(classes) + 1) // 2].to(classes.device)]
        masks[i] = torch.isin(label, chosen)
    return masks


def mix(mask: Tensor, source: Tensor, target: Tensor) -> Tensor:
    """Source where ``mask`` (B, H, W), target elsewhere; images (B, C, H, W) or labels (B, H, W)."""
    m = mask.unsqueeze(1) if source.dim() == 4 else mask
    return torch.where(m, source, target)


def mixed_weights(mask: Tensor, target_weight: Tensor) -> Tensor:
    """(B, H, W) per-pixel loss weights of mixed images: 1 on pasted source pixels (``mask``), image j's
    confidence weight ``target_weight[j]`` (B,) on its target pixels."""
    weight = target_weight.to(torch.float32).view(-1, 1, 1).expand(mask.shape)
    return torch.where(mask, torch.ones_like(weight), weight)
