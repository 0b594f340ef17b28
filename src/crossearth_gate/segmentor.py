"""The segmentor: frozen backbone + switchable toolbox + trainable head, logits at the input size."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import FrozenViT
from .heads import build_head
from .toolbox.slots import Toolbox, ToolboxConfig, check_attention_supported


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
    ):
        super().__init__()
        info = backbone.info
        self.backbone = backbone
        if "spatial" in toolbox.types:
            check_attention_supported(backbone.vit.blocks[0])
        self.toolbox = Toolbox(info.embed_dim, info.depth, toolbox)
        self.head = build_head(head, info.embed_dim, len(backbone.out_indices), num_classes, head_channels)
        self.num_classes = num_classes
        backbone.set_finetune(finetune_backbone)

    def forward(self, images: Tensor) -> Tensor:
        logits = self.head(self.backbone(images, self.toolbox))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def trainable_state(self) -> dict[str, Tensor]:
        """Weights worth saving: head + toolbox (+ backbone only when it was fine-tuned)."""
        state = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        state.update({f"toolbox.{k}": v for k, v in self.toolbox.state_dict().items()})
        if self.backbone.finetune:
            state.update({f"backbone.{k}": v for k, v in self.backbone.state_dict().items()})
        return state
