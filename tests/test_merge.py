"""Merging LoRA into the frozen qkv weights must not change predictions, nor the model it came from."""

from __future__ import annotations

import pytest
import timm
import torch

from crossearth_gate.model.backbone import BackboneInfo, FrozenViT
from crossearth_gate.model.merge import merge_for_inference
from crossearth_gate.model.segmentor import Segmentor
from crossearth_gate.toolbox.slots import ToolboxConfig

DEPTH = 4


def tiny_segmentor(active: list[str]) -> Segmentor:
    """A 4-block, 32-wide DINOv2-style ViT with every slot's weights perturbed away from its zero init."""
    torch.manual_seed(0)
    # init_values=1: DINOv2's 1e-5 LayerScale would hide any attention change from the test
    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=28, embed_dim=32, depth=DEPTH,
                            num_heads=2, dynamic_img_size=True, num_classes=0, init_values=1.0)
    info = BackboneInfo("tiny", "none", 32, DEPTH, 14, vit.num_prefix_tokens, (0.5,) * 3, (0.25,) * 3)
    model = Segmentor(FrozenViT(vit, info), 3, ToolboxConfig(lora_rank=4), head_channels=16)
    with torch.no_grad():
        for param in model.toolbox.parameters():
            param.add_(0.3 * torch.randn_like(param))
    model.toolbox.set_active(active)
    return model.eval()


def logits(model: Segmentor, images: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(images)


@pytest.mark.parametrize("active", [
    ["spatial.0", "spatial.2", "spatial.3", "semantic.1", "semantic.2", "frequency.3"],
    [f"spatial.{i}" for i in range(DEPTH)],
])
def test_merged_logits_match_and_original_is_untouched(active: list[str]) -> None:
    model = tiny_segmentor(active)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randn(2, 3, 42, 56)
    expected = logits(model, images)

    merged = merge_for_inference(model)

    torch.testing.assert_close(logits(merged, images), expected, atol=1e-5, rtol=1e-5)
    assert not any(s.startswith("spatial.") for s in merged.toolbox.active_slots())
    assert merged.toolbox.active_slots() == [s for s in model.toolbox.active_slots() if not s.startswith("spatial")]
    assert model.toolbox.active_slots() == [s for s in model.toolbox.slot_names if s in active]
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    torch.testing.assert_close(logits(model, images), expected)


def test_lora_matters_so_the_comparison_means_something() -> None:
    with_lora = logits(tiny_segmentor(["spatial.1"]), torch.ones(1, 3, 28, 28))
    without = logits(tiny_segmentor([]), torch.ones(1, 3, 28, 28))
    assert (with_lora - without).abs().max() > 1e-3


def test_only_lora_active_runs_the_bare_backbone() -> None:
    model = tiny_segmentor([f"spatial.{i}" for i in range(DEPTH)])
    merged = merge_for_inference(model)
    calls = []
    for module in merged.toolbox.modules():
        module.register_forward_hook(lambda *_: calls.append(1))
    logits(merged, torch.randn(1, 3, 28, 28))
    assert merged.toolbox.active_slots() == [] and calls == []


def test_reactivating_a_merged_slot_does_not_apply_it_twice() -> None:
    model = tiny_segmentor(["spatial.1"])
    merged = merge_for_inference(model)
    merged.toolbox.set_active(["spatial.1"])
    images = torch.randn(1, 3, 28, 28)
    torch.testing.assert_close(logits(merged, images), logits(model, images), atol=1e-5, rtol=1e-5)
