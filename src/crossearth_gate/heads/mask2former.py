"""Mask2Former (Cheng et al., CVPR 2022) on plain-ViT features, assembled from Hugging Face transformers.

The paper's decoder, as Rein and CrossEarth put it on a ViT: a simple feature pyramid (ViTDet's, ours to
write) turns the ViT's four depths into maps at 4x, 2x, 1x and 1/2x the patch grid, i.e. Mask2Former's
strides 4-32 in units of p/4. Everything else is transformers' code, configured by a ``Mask2FormerConfig``:
``Mask2FormerPixelDecoder`` (multi-scale deformable-attention encoder, FPN to the stride-4 mask features),
``Mask2FormerTransformerModule`` (masked-attention decoder: a mask and a class prediction per query after
every layer) and ``Mask2FormerLoss`` (Hungarian matching, class cross-entropy with a down-weighted
no-object class, sigmoid BCE and dice on uncertainty-sampled points, auxiliary losses on every layer).

Semantic segmentation as Mask2Former does it: the targets of an image are one binary mask per class present
in it; label 255 belongs to no mask and carries no class (every mask counts it as background, as Mask2Former's
semantic dataset mapper does). Inference marginalises: per-class score = sum over queries of
softmax(class logits without no-object) x sigmoid(mask logits), with the mask logits first resized to the
output size; argmax of the scores is the prediction, and overlapping windows blend the scores.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerLoss,
    Mask2FormerPixelDecoder,
    Mask2FormerPreTrainedModel,
    Mask2FormerTransformerModule,
)

from ..util.errors import UserError
from ..util.labels import IGNORE_INDEX
from .losses import image_weights

NUM_LEVELS = 4  # the pixel decoder's strides 4, 8, 16, 32
GROUPS = 32  # transformers' pixel decoder normalises with GroupNorm(32, channels)

# ``model.head_kwargs`` this head accepts: Mask2FormerConfig fields (defaults: Mask2Former's, as the paper uses).
OPTIONS = (
    "num_queries",  # 100
    "decoder_layers",  # 10: the initial prediction + 9 masked-attention layers
    "encoder_layers",  # 6 deformable-attention layers in the pixel decoder
    "num_attention_heads",  # 8
    "dim_feedforward",  # 2048 (transformer decoder)
    "encoder_feedforward_dim",  # 1024 (pixel decoder)
    "train_num_points",  # 12544 points per mask for matching and the mask losses
    "oversample_ratio",  # 3.0
    "importance_sample_ratio",  # 0.75
    "no_object_weight",  # 0.1
    "class_weight",  # 2.0
    "mask_weight",  # 5.0
    "dice_weight",  # 5.0
    "use_auxiliary_loss",  # True: a loss after every decoder layer
)


class MaskPredictions(NamedTuple):
    """Per decoder layer (the last is the final prediction): class logits (B, Q, C+1), mask logits (B, Q, h, w)."""

    class_logits: tuple[Tensor, ...]
    mask_logits: tuple[Tensor, ...]

    def sample(self, i: int) -> MaskPredictions:
        return MaskPredictions(tuple(c[i : i + 1] for c in self.class_logits),
                               tuple(m[i : i + 1] for m in self.mask_logits))


class SimplePyramid(nn.Module):
    """ViT maps on the patch grid → 4x (two 2x2 deconvolutions), 2x, 1x, 1/2x (max-pool), as ViTDet does.

    Projecting to ``channels`` first keeps the 4x level cheap for wide ViTs (1024 → 256 for ViT-L).
    """

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.project = nn.ModuleList(nn.Conv2d(in_channels, channels, 1) for _ in range(NUM_LEVELS))
        self.resample = nn.ModuleList([
            nn.Sequential(_up(channels), nn.GroupNorm(GROUPS, channels), nn.GELU(), _up(channels)),
            _up(channels),
            nn.Identity(),
            nn.MaxPool2d(2, ceil_mode=True),
        ])

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        return [resample(project(f)) for f, project, resample in zip(features, self.project, self.resample,
                                                                     strict=True)]


def _up(channels: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(channels, channels, 2, stride=2)


def mask2former_config(num_classes: int, channels: int, options: dict[str, Any]) -> Mask2FormerConfig:
    """A Mask2FormerConfig of width ``channels`` for ``num_classes``; unknown options fail in one line."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise UserError(f"model.head_kwargs: unknown mask2former option {unknown[0]!r} (known: {', '.join(OPTIONS)})")
    if channels % GROUPS:
        raise UserError(f"model.head_channels {channels} must be a multiple of {GROUPS} for the mask2former head")
    heads = options.get("num_attention_heads", 8)
    if channels % heads:
        raise UserError(f"model.head_channels {channels} must be a multiple of num_attention_heads {heads}")
    return Mask2FormerConfig(feature_size=channels, mask_feature_size=channels, hidden_dim=channels,
                             num_labels=num_classes, **options)


class Mask2FormerHead(nn.Module):
    """Pyramid + transformers' pixel decoder and masked-attention decoder; its own loss and semantic inference."""

    supports_vmap = False  # the Hungarian matching runs in scipy

    def __init__(self, in_channels: int, num_levels: int, num_classes: int, channels: int = 256, **options: Any):
        super().__init__()
        if num_levels != NUM_LEVELS:
            raise UserError(f"the mask2former head needs {NUM_LEVELS} feature levels (model.out_indices), "
                            f"got {num_levels}")
        self.config = mask2former_config(num_classes, channels, options)
        self.num_classes = num_classes
        self.pyramid = SimplePyramid(in_channels, channels)
        self.pixel_decoder = Mask2FormerPixelDecoder(self.config, feature_channels=[channels] * NUM_LEVELS)
        self.transformer = Mask2FormerTransformerModule(in_features=channels, config=self.config)
        self.class_predictor = nn.Linear(channels, num_classes + 1)
        _init_as_transformers(self.config, [self.pixel_decoder, self.transformer, self.class_predictor])
        self.weights = {"loss_cross_entropy": self.config.class_weight, "loss_mask": self.config.mask_weight,
                        "loss_dice": self.config.dice_weight}
        self.criterion = Mask2FormerLoss(self.config, self.weights)

    def forward(self, features: list[Tensor]) -> MaskPredictions:
        decoded = self.pixel_decoder(self.pyramid(features))
        out = self.transformer(decoded.multi_scale_features, decoded.mask_features)
        classes = tuple(self.class_predictor(h.transpose(0, 1)) for h in out.intermediate_hidden_states)
        return MaskPredictions(classes, tuple(out.masks_queries_logits))

    def scores(self, outputs: MaskPredictions, size: tuple[int, int]) -> Tensor:
        """Class scores (B, C, H, W): Σ_q softmax(class)_q,c (no-object dropped) · sigmoid(resized mask)_q."""
        masks = F.interpolate(outputs.mask_logits[-1], size=size, mode="bilinear", align_corners=False)
        classes = outputs.class_logits[-1].softmax(-1)[..., :-1]
        return torch.einsum("bqc,bqhw->bchw", classes, masks.sigmoid())

    def probabilities(self, scores: Tensor) -> Tensor:
        """The class scores normalised over the classes (they are sums of probabilities, not a softmax)."""
        scores = scores.float()
        return scores / scores.sum(1, keepdim=True).clamp(min=1e-12)

    def loss(self, outputs: MaskPredictions, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """Mask2Former's weighted class + mask + dice loss of the batch (matched per image, normalised by its masks).

        With per-pixel weights (B, H, W) the matched loss has no pixel term to weight: each image's loss is
        weighted by its mean pixel weight over its labelled pixels, then averaged (docs/da.md).
        """
        if weight is not None:
            return (image_weights(weight, target) * self.per_sample_loss(outputs, target)).mean()
        masks, classes = semantic_targets(target)
        aux = None
        if self.config.use_auxiliary_loss:
            aux = [{"masks_queries_logits": m, "class_queries_logits": c}
                   for m, c in zip(outputs.mask_logits[:-1], outputs.class_logits[:-1], strict=True)]
        losses = self.criterion(outputs.mask_logits[-1], outputs.class_logits[-1], masks, classes, aux)
        return sum(self.weights[key.rstrip("_0123456789")] * value for key, value in losses.items())

    def per_sample_loss(self, outputs: MaskPredictions, target: Tensor) -> Tensor:
        """(B,) losses, each exactly the loss of that image as a batch of one (what the Fisher squares)."""
        return torch.stack([self.loss(outputs.sample(i), target[i : i + 1]) for i in range(target.shape[0])])


def semantic_targets(target: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """Per image: binary masks (n, H, W) of the n classes present and their labels (n,); 255 is in none."""
    masks, classes = [], []
    for label in target:
        present = label.unique()
        present = present[present != IGNORE_INDEX]
        masks.append((label[None] == present[:, None, None]).float())
        classes.append(present.long())
    return masks, classes


def _init_as_transformers(config: Mask2FormerConfig, modules: list[nn.Module]) -> None:
    """transformers initialises these parts in ``Mask2FormerPreTrainedModel._init_weights``, not in their
    constructors (the pixel decoder's level embedding is even left as uninitialised memory), so apply it."""
    initialiser = Mask2FormerPreTrainedModel(config)
    for module in modules:
        module.apply(initialiser._init_weights)
