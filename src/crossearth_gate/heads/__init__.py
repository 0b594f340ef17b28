"""Decoder heads. Registry by name so new heads plug in without touching callers.

A head maps the backbone's multi-level features to raw outputs. The FPN head's outputs are logits
(pixel cross-entropy trains them); a head with its own outputs also defines ``semantic(outputs, size)``
(class scores for argmax and window blending), ``loss(outputs, target)`` and ``per_sample_loss`` (B,).
Mask2Former lives in an optional extra (transformers), so it is imported only when asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..util.errors import UserError
from .fpn import FPNHead


def _mask2former(*args: Any, **options: Any) -> nn.Module:
    try:  # transformers on import, scipy (its Hungarian matcher) when the loss is built
        from .mask2former import Mask2FormerHead

        return Mask2FormerHead(*args, **options)
    except ImportError as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"the mask2former head needs transformers and scipy ({reason}): "
                        "pip install crossearth-gate[mask2former]") from None


HEADS: dict[str, Callable[..., nn.Module]] = {"fpn": FPNHead, "mask2former": _mask2former}


def build_head(name: str, in_channels: int, num_levels: int, num_classes: int, channels: int,
               options: dict[str, Any] | None = None) -> nn.Module:
    """``options`` (``model.head_kwargs``) go to the head; the FPN head takes none."""
    if name not in HEADS:
        raise UserError(f"unknown head {name!r}; choose from {sorted(HEADS)}")
    if options and name == "fpn":
        raise UserError(f"model.head_kwargs {sorted(options)}: the fpn head takes none")
    return HEADS[name](in_channels, num_levels, num_classes, channels, **(options or {}))


def has_own_loss(head: nn.Module) -> bool:
    """Heads with raw outputs other than logits (Mask2Former) bring their loss; others train with cross-entropy."""
    return hasattr(head, "loss")
