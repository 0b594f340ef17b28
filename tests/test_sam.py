"""SAM's image encoder (windowed + global attention, relative positions, a 2-D token grid, no class token).

Every slot type in every block through the block's own forward; features as timm gives them; the Fisher
gate against a per-image brute force; merge, save, load and export round trips.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer_sam import window_partition, window_unpartition
from torch import Tensor

from crossearth_gate.gating import slot_fisher
from crossearth_gate.model.artefacts import export_model, load_trainable, save_trainable, spec_of
from crossearth_gate.model.backbone import build_backbone
from crossearth_gate.model.merge import merge_for_inference
from crossearth_gate.model.segmentor import Segmentor
from crossearth_gate.toolbox.slots import SLOT_TYPES, ToolboxConfig
from support.tiny import tiny_model

SAM = "samvit_base_patch16"
SAM_KWARGS = tiny_model("sam")  # window 2 on a 4×4 pre-training grid, global attention in blocks 1 and 3
DEPTH = SAM_KWARGS["depth"]
SIZE = (48, 64)  # a 3×4 grid: windows need padding, and relative positions are resampled in the global blocks


def images(batch: int = 2, seed: int = 0) -> Tensor:
    return torch.randn(batch, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


def labels(batch: int = 2, seed: int = 1) -> Tensor:
    return torch.randint(0, 3, (batch, *SIZE), generator=torch.Generator().manual_seed(seed))


def randomise(module: torch.nn.Module, seed: int, std: float = 0.2) -> None:
    """Perturb every parameter (zero-initialised ones and SAM's zero relative-position tables included)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * std)


def sam_segmentor(head: str = "fpn", config: ToolboxConfig | None = None, seed: int = 0) -> Segmentor:
    torch.manual_seed(seed)
    backbone = build_backbone(SAM, "none", out_indices=[0, 1, 2, 3], model_kwargs=dict(SAM_KWARGS))
    randomise(backbone.vit, seed + 1, std=0.05)
    kwargs = {"num_queries": 4} if head == "mask2former" else None
    return Segmentor(backbone, 3, config or ToolboxConfig(lora_rank=4), head=head, head_channels=32,
                     head_kwargs=kwargs).eval()


def timm_features(vit: torch.nn.Module, x: Tensor) -> list[Tensor]:
    return vit.forward_intermediates(x, indices=list(range(DEPTH)), intermediates_only=True)


# ---------------------------------------------------------------- features: the encoder's own


def test_no_active_slot_gives_timm_forward_exactly() -> None:
    model = sam_segmentor()
    assert model.backbone.info.num_prefix_tokens == 0 and model.backbone.info.patch_size == 16
    x = images()
    with torch.no_grad():
        expected = timm_features(model.backbone.vit, x)
        assert len(expected) == DEPTH and expected[0].shape == (2, 32, 3, 4)
        for active in ([], None):  # none active; all active at their zero start
            model.toolbox.set_active(model.toolbox.slot_names if active is None else active)
            for ours, theirs in zip(model.backbone(x, model.toolbox), expected, strict=True):
                torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
        for ours, theirs in zip(model.backbone(x, None), expected, strict=True):
            torch.testing.assert_close(ours, theirs, atol=0, rtol=0)


@pytest.mark.parametrize("slot_type", SLOT_TYPES)
def test_each_slot_type_changes_the_encoder_only_when_active(slot_type: str) -> None:
    model = sam_segmentor()
    randomise(model.toolbox, seed=5)
    x = images()
    with torch.no_grad():
        bare = timm_features(model.backbone.vit, x)
        for layer in range(DEPTH):  # windowed (0, 2) and global (1, 3) blocks
            model.toolbox.set_active([f"{slot_type}.{layer}"])
            feats = model.backbone(x, model.toolbox)
            for depth in range(DEPTH):
                if depth < layer:
                    torch.testing.assert_close(feats[depth], bare[depth], atol=0, rtol=0)
                else:
                    assert (feats[depth] - bare[depth]).abs().max() > 1e-3, (layer, depth)
            others = [n for n in model.toolbox.slot_names if not n.startswith(slot_type)]
            model.toolbox.set_active(others)
            rest = model.backbone(x, model.toolbox)
            model.toolbox.set_active(others + [f"{slot_type}.{layer}"])
            assert (model.backbone(x, model.toolbox)[-1] - rest[-1]).abs().max() > 1e-3


def sam_post_attention(block: torch.nn.Module, x: Tensor) -> Tensor:
    """SAM's T̂ = x + LS1(attn(norm1 x)) over windows (or globally), written out from timm's window helpers."""
    h, w = x.shape[1:3]
    y = block.norm1(x)
    if block.window_size > 0:
        windows, pad = window_partition(y, block.window_size)
        y = window_unpartition(block.attn(windows), block.window_size, (h, w), pad)
    else:
        y = block.attn(y)
    return x + block.ls1(y)


def test_adapter_reads_the_post_attention_grid_and_adds_beside_the_mlp() -> None:
    model = sam_segmentor()
    randomise(model.toolbox, seed=6)
    vit = model.backbone.vit
    x = images()
    with torch.no_grad():
        tokens = model.backbone.tokens.embed(vit, x)
        for layer in range(2):  # block 0 is windowed, block 1 global
            model.toolbox.set_active([f"semantic.{layer}"])
            adapter = model.toolbox.slot_module(f"semantic.{layer}")
            block = vit.blocks[layer]
            post = sam_post_attention(block, tokens)
            expected = post + block.ls2(block.mlp(block.norm2(post))) + adapter.bottleneck(post) * adapter.scale
            ours = model.backbone(x, model.toolbox)[layer].permute(0, 2, 3, 1)
            if layer == 1:
                tokens = vit.blocks[0](tokens)
                post = sam_post_attention(block, tokens)
                expected = post + block.ls2(block.mlp(block.norm2(post))) + adapter.bottleneck(post) * adapter.scale
            torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_frequency_slot_works_on_the_token_grid() -> None:
    model = sam_segmentor()
    randomise(model.toolbox, seed=7)
    vit = model.backbone.vit
    x = images()
    model.toolbox.set_active(["frequency.0"])
    frequency = model.toolbox.slot_module("frequency.0")
    with torch.no_grad():
        grid = vit.blocks[0](model.backbone.tokens.embed(vit, x))  # (B, 3, 4, C)
        # the same grid as a flat sequence without prefix tokens, as the frequency module defines it
        expected = grid + frequency(grid.reshape(2, 12, 32), (3, 4), 0).reshape(grid.shape)
        torch.testing.assert_close(model.backbone(x, model.toolbox)[0].permute(0, 2, 3, 1), expected,
                                   atol=1e-6, rtol=0)


def test_lora_wraps_sams_qkv_and_leaves_its_attention_code_alone() -> None:
    model = sam_segmentor()
    randomise(model.toolbox, seed=8)
    vit = model.backbone.vit
    assert type(vit.blocks[0].attn).__module__ == "timm.models.vision_transformer_sam"
    x = images()
    with torch.no_grad():
        for layer in (0, 1):
            model.toolbox.set_active([f"spatial.{layer}"])
            ours = model.backbone(x, model.toolbox)[-1]
            # reference: a plain copy of the encoder whose fused qkv weight carries the deltas
            reference = timm.create_model(SAM, pretrained=False, num_classes=0, **SAM_KWARGS).eval()
            reference.load_state_dict(vit.state_dict())
            lora = model.toolbox.slot_module(f"spatial.{layer}")
            d = 32
            reference.blocks[layer].attn.qkv.weight[:d] += lora.scaling * lora.b_q @ lora.a_q
            reference.blocks[layer].attn.qkv.weight[2 * d :] += lora.scaling * lora.b_v @ lora.a_v
            torch.testing.assert_close(ours, timm_features(reference, x)[-1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("head", ["fpn", "mask2former"])
def test_both_heads_take_sams_multi_depth_features(head: str) -> None:
    model = sam_segmentor(head)
    randomise(model.toolbox, seed=9)
    with torch.no_grad():
        assert model(images()).shape == (2, 3, *SIZE)


# ---------------------------------------------------------------- the gate


def per_sample_ce(logits: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(logits, target, reduction="none").flatten(1).mean(1)


def test_fisher_scores_of_a_tiny_sam_equal_a_per_image_brute_force() -> None:
    model = sam_segmentor()
    randomise(model.toolbox, seed=10, std=0.05)
    model.toolbox.set_active(["spatial.2"])
    x, y = images(3), labels(3)
    stats = slot_fisher(model, model.toolbox, [(x[:2], y[:2]), (x[2:], y[2:])], per_sample_ce, 3)
    assert model.toolbox.active_slots() == ["spatial.2"]  # restored afterwards

    brute = copy.deepcopy(model)
    brute.toolbox.set_active(brute.toolbox.slot_names)
    sums = dict.fromkeys(brute.toolbox.slot_names, 0.0)
    for i in range(3):
        brute.zero_grad(set_to_none=True)
        per_sample_ce(brute(x[i : i + 1]), y[i : i + 1]).sum().backward()
        for name in sums:
            sums[name] += sum(float(p.grad.double().pow(2).sum()) for p in brute.toolbox.slot_parameters(name))
    assert stats.count == 3
    assert all(v > 0 for v in sums.values())
    for name, total in sums.items():
        assert stats.sums[name] == pytest.approx(total, rel=1e-4), name


def test_vmap_fisher_agrees_with_the_loop_on_sam() -> None:
    model = sam_segmentor()
    randomise(model.toolbox, seed=11, std=0.05)
    x, y = images(2), labels(2)
    loop = slot_fisher(model, model.toolbox, [(x, y)], per_sample_ce, 2)
    vmap = slot_fisher(model, model.toolbox, [(x, y)], per_sample_ce, 2, method="vmap")
    for name in loop.sums:
        assert vmap.sums[name] == pytest.approx(loop.sums[name], rel=1e-4), name


# ---------------------------------------------------------------- merge, save, load, export


def test_merge_is_exact_on_sam() -> None:
    model = sam_segmentor()
    randomise(model.toolbox, seed=12)
    model.toolbox.set_active(["spatial.0", "spatial.1", "spatial.3", "semantic.2", "frequency.1"])
    x = images()
    with torch.no_grad():
        expected = model(x)
        merged = merge_for_inference(model)
        torch.testing.assert_close(merged(x), expected, atol=1e-5, rtol=0)
        assert merged.toolbox.active_slots() == ["semantic.2", "frequency.1"]
        torch.testing.assert_close(model(x), expected, atol=0, rtol=0)  # the original is untouched


def test_save_load_and_export_round_trip(tmp_path: Path) -> None:
    model = sam_segmentor()
    randomise(model.toolbox, seed=13)
    randomise(model.head, seed=14, std=0.05)
    model.toolbox.set_active(["spatial.1", "semantic.0", "frequency.3"])
    spec = spec_of(model, ["a", "b", "c"], [[0, 0, 0]] * 3, 0, 64, "fpn", 32, backbone_kwargs=dict(SAM_KWARGS))
    path = save_trainable(tmp_path / "sam.safetensors", model, spec)
    exported, _ = export_model(path, tmp_path / "export" / "sam.safetensors")
    x = images()
    with torch.no_grad():
        expected = model(x)
        for file in (path, exported):
            loaded, _ = load_trainable(file)
            loaded.backbone.vit.load_state_dict(model.backbone.vit.state_dict())  # random-init backbone
            torch.testing.assert_close(loaded(x), expected, atol=0, rtol=0)
