"""The segmentor: frozen backbone + switchable toolbox + trainable head, class scores at the input size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from ..heads import build_head
from ..toolbox.slots import Toolbox, ToolboxConfig
from ..util.errors import UserError
from .backbone import FrozenViT
from .bands import band_state, grow_patch_embedding


class Segmentor(nn.Module):
    """Everything the training task optimises lives here; the backbone's own weights stay frozen."""

    def __init__(
        self,
        backbone: FrozenViT,
        num_classes: int,
        toolbox: ToolboxConfig,
        head: str = "fpn",
        head_channels: int = 128,
        finetune_backbone: bool = False,
        head_kwargs: dict[str, Any] | None = None,
        band_kernels: Sequence[int] | None = None,
        class_weights: Sequence[float] | None = None,
    ):
        """``band_kernels``: per input channel, the pretrained RGB kernel it takes (0, 1, 2) or -1 for a new
        zero-initialised trainable one (model/bands.py); None: the backbone's own 3-channel embedding.
        ``class_weights``: the head's per-class loss weights (``train.class_weights``; training only)."""
        super().__init__()
        info = backbone.info
        if band_kernels is not None:
            grow_patch_embedding(backbone.vit, band_kernels)
        self.backbone = backbone
        self.toolbox = Toolbox(info.embed_dim, info.depth, toolbox)
        self.toolbox.attach(backbone.vit.blocks)
        levels = backbone.out_indices
        if len(set(levels)) != len(levels):  # the backbone gives one feature map per block: a repeat is lost
            raise UserError(f"backbone {info.name} has {info.depth} blocks: out_indices {list(levels)} repeat a block,"
                            " so the head cannot get a feature map per level; give distinct blocks "
                            "(model.out_indices) or a deeper backbone")
        self.head_kwargs = dict(head_kwargs or {})
        self.head = build_head(head, info.embed_dim, len(backbone.out_indices), num_classes, head_channels,
                               self.head_kwargs, class_weights)
        self.num_classes = num_classes
        backbone.set_finetune(finetune_backbone)

    def forward(self, images: Tensor) -> Tensor:
        """Class scores (B, C, H, W) at the input size: their argmax is the prediction, windows blend them."""
        return self.scores(self.head_outputs(images), images.shape[-2:])

    def head_outputs(self, images: Tensor) -> Any:
        """The head's raw outputs: logits at stride p/4 (FPN), per-query classes and masks (Mask2Former)."""
        return self.head(self.backbone(images, self.toolbox))

    def scores(self, outputs: Any, size: tuple[int, int]) -> Tensor:
        return self.head.scores(outputs, size)

    def trainable_state(self) -> dict[str, Tensor]:
        """Weights worth saving: head + toolbox (+ backbone only when it was fine-tuned)."""
        state = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        state.update({f"toolbox.{k}": v for k, v in self.toolbox.state_dict().items()})
        if self.backbone.finetune:
            state.update({f"backbone.{k}": v for k, v in self.backbone.state_dict().items()})
        state.update(band_state(self.backbone.vit, "backbone.vit."))
        return state


class HeadOutputs(nn.Module):
    """The segmentor as its head's loss sees it (images → raw head outputs), e.g. for the Fisher gate."""

    def __init__(self, segmentor: Segmentor):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, images: Tensor) -> Any:
        return self.segmentor.head_outputs(images)
