"""More bands than R, G, B on an RGB-pretrained backbone: at zero the new kernels change nothing (bit for bit),
they receive gradient and train, count as trainable, survive save → load, and fold into one conv."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from crossearth_gate.heads.losses import cross_entropy
from crossearth_gate.model.artefacts import build_seeded_backbone, load_trainable, save_trainable, spec_of
from crossearth_gate.model.bands import BandProjection, check_kernels, kernel_map
from crossearth_gate.model.merge import merge_for_inference
from crossearth_gate.model.segmentor import Segmentor
from crossearth_gate.toolbox.slots import ToolboxConfig
from crossearth_gate.util.errors import UserError

BACKBONE, SIZE, SEED = "test_vit", 32, 3  # timm's tiny ViT (patch 16), rebuilt from its spec by name
CLASSES = ["background", "building", "road"]
PALETTE = [[0, 0, 0], [255, 0, 0], [0, 0, 255]]
KERNELS = (-1, 2, 1, -1, 0)  # five channels: B at 1, G at 2, R at 4; channels 0 and 3 are new (e.g. NIR, SWIR)
RGB_CHANNELS = [4, 2, 1]
ACTIVE = ["spatial.4", "semantic.5"]  # high slots only: the gate would let the low blocks run without autograd


def segmentor(kernels: tuple[int, ...] | None, finetune: bool = False) -> Segmentor:
    """The same seeded backbone, slots and head every time; perturbed so that every part shapes the output."""
    backbone = build_seeded_backbone(BACKBONE, "none", SIZE, None, SEED)
    torch.manual_seed(0)
    model = Segmentor(backbone, len(CLASSES), ToolboxConfig(lora_rank=2), head="fpn", head_channels=16,
                      finetune_backbone=finetune, band_kernels=kernels)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in [*model.toolbox.parameters(), *model.head.parameters()]:
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    model.toolbox.set_active(ACTIVE)
    return model


def images(channels: int = len(KERNELS)) -> torch.Tensor:
    return torch.randn(2, channels, SIZE, SIZE + 16, generator=torch.Generator().manual_seed(5))


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def bands_of(model: Segmentor) -> BandProjection:
    proj = model.backbone.vit.patch_embed.proj
    assert isinstance(proj, BandProjection)
    return proj


def train_one_step(model: Segmentor, x: torch.Tensor) -> None:
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    masks = torch.randint(0, len(CLASSES), (x.shape[0], *x.shape[-2:]), generator=torch.Generator().manual_seed(6))
    cross_entropy(model(x), masks).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.eval()


def test_kernel_maps_and_bad_ones() -> None:
    assert kernel_map(5, RGB_CHANNELS) == KERNELS
    assert kernel_map(3, [0, 1, 2]) == (0, 1, 2)
    for bad in ([0, 0, 1], [0, 1], [0, 1, 5]):
        with pytest.raises(UserError, match="three different indices"):
            kernel_map(5, bad)
    for bad in ([0, 0, -1], [3, 1], [], [-2]):
        with pytest.raises(UserError, match="band kernels must be"):
            check_kernels(bad)


@pytest.mark.parametrize("finetune", [False, True])
def test_at_zero_the_model_is_the_rgb_model_exactly(finetune: bool) -> None:
    rgb, banded = segmentor(None, finetune).eval(), segmentor(KERNELS, finetune).eval()
    x = images()
    with torch.no_grad():
        assert torch.equal(banded(x), rgb(x[:, RGB_CHANNELS]))
    # the embedding's own pretrained weights are untouched and stay as trainable as before
    assert torch.equal(bands_of(banded).rgb.weight, rgb.backbone.vit.patch_embed.proj.weight)
    assert bands_of(banded).rgb.weight.requires_grad == finetune


def test_the_new_kernels_get_gradient_and_count_as_trainable() -> None:
    rgb, banded = segmentor(None), segmentor(KERNELS)
    proj = bands_of(banded)
    d, _, p, _ = proj.rgb.weight.shape
    assert proj.extra.shape == (d, 2, p, p) and not proj.extra.any()
    assert trainable(banded) - trainable(rgb) == d * 2 * p * p
    banded.train()
    x = images()
    cross_entropy(banded(x), torch.zeros(2, *x.shape[-2:], dtype=torch.long)).backward()
    assert proj.extra.grad is not None and proj.extra.grad.abs().sum() > 0
    assert proj.rgb.weight.grad is None  # the pretrained kernels stay frozen


def test_a_trained_band_model_saves_loads_and_merges(tmp_path: Path) -> None:
    model = segmentor(KERNELS)
    x = images()
    train_one_step(model, x)
    assert bands_of(model).extra.abs().sum() > 0
    with torch.no_grad():
        trained = model(x)
        assert not torch.allclose(trained, segmentor(None).eval()(x[:, RGB_CHANNELS]), atol=1e-4)
    spec = spec_of(model, CLASSES, PALETTE, SEED, SIZE, "fpn", 16)
    assert spec.band_kernels == list(KERNELS)
    path = save_trainable(tmp_path / "model.safetensors", model, spec)
    loaded, _ = load_trainable(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), trained)
        merged = merge_for_inference(model)
        conv = merged.backbone.vit.patch_embed.proj
        assert type(conv) is nn.Conv2d and conv.in_channels == len(KERNELS)
        torch.testing.assert_close(merged(x), trained, atol=1e-5, rtol=1e-5)
        assert torch.equal(model(x), trained), "merging leaves the model it came from untouched"


def test_the_embedding_refuses_a_wrong_channel_count() -> None:
    with pytest.raises(ValueError, match="input has 3 channels, the patch embedding expects 5"):
        segmentor(KERNELS).eval()(images(3))


def test_the_training_task_optimises_the_new_kernels() -> None:
    from crossearth_gate.config.schema import load_config
    from crossearth_gate.training.task import SegmentationTask, build_segmentor

    cfg = load_config("demo", ["model.backbone=test_vit", "model.weights=none", f"data.crop_size={SIZE}"])
    task = SegmentationTask(cfg, CLASSES, [tuple(c) for c in PALETTE], [])
    plain = {id(p) for group in task.configure_optimizers()["optimizer"].param_groups for p in group["params"]}
    task.model = build_segmentor(cfg, len(CLASSES), KERNELS)
    grown = {id(p) for group in task.configure_optimizers()["optimizer"].param_groups for p in group["params"]}
    assert id(bands_of(task.model).extra) in grown and len(grown) == len(plain) + 1


def test_the_da_teacher_averages_the_new_kernels_too() -> None:
    from crossearth_gate.adaptation.teacher import teacher_names

    assert "backbone.vit.patch_embed.proj.extra" in teacher_names(segmentor(KERNELS))
    assert not [n for n in teacher_names(segmentor(None)) if n.startswith("backbone.")]
