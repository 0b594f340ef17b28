"""Loading a checkpoint's trained weights into a script's own model: only the frozen backbone may be missing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from crossearth_gate.training.checkpoint_io import load_trained_weights
from crossearth_gate.util.errors import UserError


class Tiny(nn.Module):
    """A backbone.vit and a head, named as the Segmentor names them."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.vit = nn.Linear(2, 2)
        self.head = nn.Linear(2, 3)


def test_trained_weights_load_and_the_frozen_backbone_may_be_missing() -> None:
    model = Tiny()
    head = {"weight": torch.full((3, 2), 7.0), "bias": torch.ones(3)}
    backbone_before = model.backbone.vit.weight.clone()
    load_trained_weights(model, {f"model.head.{k}": v for k, v in head.items()} | {"teacher.x": torch.zeros(1)},
                         Path("last.ckpt"))
    assert torch.equal(model.head.weight, head["weight"]) and torch.equal(model.head.bias, head["bias"])
    assert torch.equal(model.backbone.vit.weight, backbone_before)


@pytest.mark.parametrize("state", [
    {"model.head.weight": torch.zeros(3, 2)},  # the head's bias missing: not only the frozen backbone
    {"model.head.weight": torch.zeros(3, 2), "model.head.bias": torch.zeros(3), "model.other.w": torch.zeros(1)},
    {"model.head.weight": torch.zeros(3, 3), "model.head.bias": torch.zeros(3)},  # another shape
])
def test_another_models_checkpoint_is_one_line(state: dict[str, torch.Tensor]) -> None:
    with pytest.raises(UserError, match=r"^last.ckpt: not this config's model \("):
        load_trained_weights(Tiny(), state, Path("last.ckpt"))
