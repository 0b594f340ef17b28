"""A light multi-level decoder for plain ViTs: a simple feature pyramid, FPN top-down fusion, classifier.

ViT features all have stride p (the patch size); the pyramid resamples the ``num_levels`` depths to
strides p/4, p/2, p, 2p (shallow to deep) as ViTDet-style heads do, so that detail comes from the
shallow blocks and context from the deep ones. GroupNorm keeps it batch-size independent (and makes
per-sample Fisher scores independent of the other samples in a batch).

Each lateral's 1×1 projection runs BEFORE the resampling: a 1×1 convolution and bilinear resampling
are both linear and commute, so projecting the full-width ViT features at stride p and resampling
head-width maps gives the same output as resampling first, at a fraction of the cost (384 → 96
channels for ViT-S, at 16× the pixels on the finest level). GroupNorm and ReLU stay after the
resampling, where their statistics were computed before.

The fusing convolution runs on all levels' channels at the finest stride, so it is most of the head's
cost: ``fuse_kernel: 1`` (``model.head_kwargs``) makes it a 1×1 (a ninth of its FLOPs), leaving spatial
smoothing to the per-level 3×3 convolutions before it (cost: benchmarks/fpn_fuse_cost.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..util.errors import UserError
from .losses import cross_entropy, per_sample_cross_entropy, weighted_cross_entropy

FPN_OPTIONS = ("fuse_kernel",)  # model.head_kwargs the FPN head takes


def check_fpn_options(options: dict[str, object]) -> None:
    """``model.head_kwargs`` for the FPN head: known names, a fusing kernel that is an odd size >= 1."""
    unknown = sorted(set(options) - set(FPN_OPTIONS))
    if unknown:
        raise UserError(f"model.head_kwargs: unknown fpn option {unknown[0]!r} (known: {', '.join(FPN_OPTIONS)})")
    kernel = options.get("fuse_kernel", 3)
    if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
        raise UserError(f"model.head_kwargs.fuse_kernel: expected an odd kernel size >= 1 (1 or 3), got {kernel!r}")


def _conv_gn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
        nn.GroupNorm(min(32, cout // 4) or 1, cout),
        nn.ReLU(inplace=True),
    )


class FPNHead(nn.Module):
    """Simple pyramid + FPN over ViT features from several depths; logits at stride p/4, trained with pixel
    cross-entropy on the logits resized to the labels."""

    supports_vmap = True

    def __init__(self, in_channels: int, num_levels: int, num_classes: int, channels: int = 128,
                 class_weights: Sequence[float] | None = None, fuse_kernel: int = 3):
        super().__init__()
        # not persistent: a config value (train.class_weights), never part of the saved weights
        weight = None if class_weights is None else torch.tensor(list(class_weights), dtype=torch.float32)
        self.register_buffer("class_weight", weight, persistent=False)
        self.scales = [2.0 ** (2 - i) if i < 3 else 0.5 for i in range(num_levels)]
        self.lateral = nn.ModuleList(_conv_gn_relu(in_channels, channels, 1) for _ in range(num_levels))
        self.smooth = nn.ModuleList(_conv_gn_relu(channels, channels, 3) for _ in range(num_levels))
        self.fuse = _conv_gn_relu(channels * num_levels, channels, fuse_kernel)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[Tensor]) -> Tensor:
        if len(features) != len(self.lateral):
            raise ValueError(f"head expects {len(self.lateral)} feature levels, got {len(features)}")
        base = [int(side) for side in features[0].shape[-2:]]  # plain ints: an ONNX trace fixes them
        laterals = []
        for feat, lateral, scale in zip(features, self.lateral, self.scales, strict=True):
            size = (max(1, round(base[0] * scale)), max(1, round(base[1] * scale)))
            project, norm_act = lateral[0], lateral[1:]
            projected = F.interpolate(project(feat), size=size, mode="bilinear", align_corners=False)
            laterals.append(norm_act(projected))
        for i in range(len(laterals) - 1, 0, -1):  # top-down: deep context into finer levels
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="bilinear", align_corners=False
            )
        finest = laterals[0].shape[-2:]
        outs = [
            F.interpolate(smooth(lat), size=finest, mode="bilinear", align_corners=False)
            for smooth, lat in zip(self.smooth, laterals, strict=True)
        ]
        return self.classifier(self.fuse(torch.cat(outs, dim=1)))


    def scores(self, outputs: Tensor, size: tuple[int, int]) -> Tensor:
        """The logits resized (bilinear) to ``size``."""
        return F.interpolate(outputs, size=size, mode="bilinear", align_corners=False)

    def probabilities(self, scores: Tensor) -> Tensor:
        return F.softmax(scores.float(), dim=1)

    def loss(self, outputs: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """Mean pixel cross-entropy over the batch's labelled pixels (each term times its weight, if given)."""
        logits = self.scores(outputs, target.shape[-2:])
        if weight is None:
            return cross_entropy(logits, target, self.class_weight)
        if self.class_weight is not None:  # each pixel's term also times its class's weight
            weight = weight * self.class_weight[target.clamp(max=len(self.class_weight) - 1)]
        return weighted_cross_entropy(logits, target, weight)

    def per_sample_loss(self, outputs: Tensor, target: Tensor) -> Tensor:
        return per_sample_cross_entropy(self.scores(outputs, target.shape[-2:]), target)
