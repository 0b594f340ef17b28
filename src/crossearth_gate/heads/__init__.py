"""Decoder heads. Registry by name so new heads plug in without touching callers.

Every head is a ``SegmentationHead``: it maps the backbone's multi-level features to raw outputs (logits
at stride p/4 for FPN, per-query classes and masks for Mask2Former) and says what they mean: class scores
at a size (argmax and window blending), class probabilities, its loss and its per-sample loss. Callers
never ask which head they hold. Mask2Former lives in an optional extra (transformers), so it is imported
only when asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

from torch import Tensor, nn

from ..util.errors import UserError
from .fpn import FPN_OPTIONS, FPNHead, check_fpn_options


def _mask2former(*args: Any, **options: Any) -> nn.Module:
    try:  # transformers on import, scipy (its Hungarian matcher) when the loss is built
        from .mask2former import Mask2FormerHead

        return Mask2FormerHead(*args, **options)
    except ImportError as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"the mask2former head needs transformers and scipy ({reason}): "
                        "pip install crossearth-gate[mask2former]") from None


HeadName = Literal["fpn", "mask2former"]  # model.head
HEADS: dict[HeadName, Callable[..., nn.Module]] = {"fpn": FPNHead, "mask2former": _mask2former}


def build_head(name: str, in_channels: int, num_levels: int, num_classes: int, channels: int,
               options: dict[str, Any] | None = None, class_weights: Sequence[float] | None = None) -> nn.Module:
    """``options`` (``model.head_kwargs``) go to the head. ``class_weights`` (``train.class_weights``) weight the
    FPN head's pixel cross-entropy; Mask2Former's matched losses take none."""
    if name not in HEADS:
        raise UserError(f"unknown head {name!r}; choose from {sorted(HEADS)}")
    options = dict(options or {})
    if name == "fpn":
        check_fpn_options(options)
    elif fpn_only := sorted(set(options) & set(FPN_OPTIONS)):  # left over from a config written for FPN
        raise UserError(f"model.head_kwargs.{fpn_only[0]} is an option of the fpn head, not of {name}: "
                        "when switching model.head, also set model.head_kwargs={} (or the new head's options)")
    if class_weights is not None:
        if name != "fpn":
            raise UserError(f"config train.class_weights: the {name} head has its own loss; remove them")
        options["class_weights"] = class_weights
    return HEADS[name](in_channels, num_levels, num_classes, channels, **options)


class SegmentationHead(Protocol):
    """What the segmentor, the training task, DACS and the Fisher gate need from a head."""

    supports_vmap: bool  # can torch.func.vmap differentiate its per-sample loss (gate.fisher_method vmap)?

    def __call__(self, features: list[Tensor]) -> Any: ...

    def scores(self, outputs: Any, size: tuple[int, int]) -> Tensor:
        """Class scores (B, C, H, W) at ``size``: their argmax is the prediction, windows blend them."""
        ...

    def probabilities(self, scores: Tensor) -> Tensor:
        """Class probabilities (B, C, H, W) from ``scores`` (what a teacher's confidence is read from)."""
        ...

    def loss(self, outputs: Any, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """The batch loss against labels (B, H, W), optionally with per-pixel weights (B, H, W)."""
        ...

    def per_sample_loss(self, outputs: Any, target: Tensor) -> Tensor:
        """(B,): each image's loss as a batch of one (what the Fisher gate squares gradients of)."""
        ...
