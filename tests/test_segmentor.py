"""The segmentor: identity at init, slot gating (no calls, no grads, no autograd below), artefact round trip."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from crossearth_gate.model.artefacts import build_seeded_backbone, load_trainable, read_spec, save_trainable, spec_of
from crossearth_gate.model.segmentor import Segmentor
from crossearth_gate.toolbox.slots import ToolboxConfig
from crossearth_gate.util.errors import UserError
from support.models import TINY_DEPTH, images, perturb, tiny_backbone

NUM_CLASSES = 3


def segmentor(kind: str = "dinov2", config: ToolboxConfig | None = None, **kwargs: object) -> Segmentor:
    torch.manual_seed(0)
    return Segmentor(tiny_backbone(kind), NUM_CLASSES, config or ToolboxConfig(), head_channels=16, **kwargs)


# ---------------------------------------------------------------- identity at initialisation


@pytest.mark.parametrize(("kind", "size"), [("dinov2", (28, 42)), ("plain", (32, 48)), ("reg", (42, 28))])
def test_all_slots_active_at_init_equal_frozen_features(kind: str, size: tuple[int, int]) -> None:
    model = segmentor(kind).eval()
    assert model.toolbox.active_slots() == model.toolbox.slot_names
    x = images(*size)
    with torch.no_grad():
        frozen = model.backbone(x, None)
        adapted = model.backbone(x, model.toolbox)
        patch = model.backbone.patch_size
        assert len(frozen) == TINY_DEPTH
        for a, f in zip(adapted, frozen, strict=True):
            assert f.shape == (2, 32, size[0] // patch, size[1] // patch)
            torch.testing.assert_close(a, f, atol=1e-5, rtol=0)
        # the comparison is not vacuous: trained slots do change the features
        perturb(model.toolbox, std=0.1)
        changed = model.backbone(x, model.toolbox)
        assert not torch.allclose(changed[-1], frozen[-1], atol=1e-3)


def test_logits_have_input_size() -> None:
    model = segmentor("plain").eval()
    with torch.no_grad():
        assert model(images(32, 48)).shape == (2, NUM_CLASSES, 32, 48)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(images(30, 32))


def test_backbone_stays_in_eval_mode() -> None:
    model = segmentor().train()
    assert model.training and model.head.training
    assert not any(m.training for m in model.backbone.vit.modules())


# ---------------------------------------------------------------- gating


def test_inactive_slots_are_never_called_and_get_no_grad() -> None:
    model = segmentor().train()
    active = {"spatial.1", "semantic.2", "frequency.3"}
    model.toolbox.set_active(active)
    perturb(model.toolbox, std=0.1)  # non-zero B / up-projections: every parameter can get a gradient
    called: list[str] = []

    def forbid(name: str):
        def hook(module: nn.Module, args: object) -> None:
            raise AssertionError(f"inactive slot {name} was called")
        return hook

    def record(name: str):
        def hook(module: nn.Module, args: object) -> None:
            called.append(name)
        return hook

    for name in model.toolbox.slot_names:
        model.toolbox.slot_module(name).register_forward_pre_hook(record(name) if name in active else forbid(name))
    model(images(28, 28)).logsumexp(1).mean().backward()
    assert sorted(called) == sorted(active)
    for name in model.toolbox.slot_names:
        grads = [p.grad for p in model.toolbox.slot_parameters(name)]
        if name in active:
            assert all(g is not None and g.abs().max() > 0 for g in grads), name
        else:
            assert all(g is None for g in grads), name
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.head.parameters())


def test_active_slot_at_init_gets_gradient() -> None:
    model = segmentor()
    model.toolbox.set_active(["spatial.2", "semantic.2"])
    model(images(28, 28)).logsumexp(1).mean().backward()
    lora = model.toolbox.slot_module("spatial.2")
    adapter = model.toolbox.slot_module("semantic.2").bottleneck
    # zero-initialised B / up get gradients; A / down get exact zeros (not None) while B / up are 0
    assert lora.b_q.grad.abs().max() > 0 and lora.b_v.grad.abs().max() > 0
    assert adapter.up.weight.grad.abs().max() > 0
    assert lora.a_q.grad is not None and lora.a_q.grad.abs().max() == 0


@pytest.mark.parametrize(("active", "first_grad"), [(["semantic.2", "frequency.3"], 2), (["spatial.0"], 0),
                                                     (["frequency.3"], 3), ([], TINY_DEPTH)])
def test_blocks_below_lowest_active_slot_run_without_autograd(active: list[str], first_grad: int) -> None:
    model = segmentor()
    model.toolbox.set_active(active)
    # even an input that requires grad (so every op could be recorded) is not tracked below first_grad
    x = images(28, 28).requires_grad_(True)
    grad_mode: list[bool] = []
    vit = model.backbone.vit
    for module in [vit.patch_embed, *(block.norm1 for block in vit.blocks)]:
        module.register_forward_pre_hook(lambda m, a: grad_mode.append(torch.is_grad_enabled()))
    features = model.backbone(x, model.toolbox)
    assert [f.requires_grad for f in features] == [i >= first_grad for i in range(TINY_DEPTH)]
    assert grad_mode == [first_grad == 0] + [i >= first_grad for i in range(TINY_DEPTH)]
    logits = model(images(28, 28))
    assert logits.requires_grad


def test_no_autograd_anywhere_under_no_grad() -> None:
    model = segmentor()
    with torch.no_grad():
        assert not any(f.requires_grad for f in model.backbone(images(28, 28), model.toolbox))


def test_finetune_backbone_trains_everything() -> None:
    model = segmentor(finetune_backbone=True)
    model.toolbox.set_active(["frequency.3"])
    features = model.backbone(images(28, 28), model.toolbox)
    assert all(f.requires_grad for f in features)
    model(images(28, 28)).logsumexp(1).mean().backward()
    assert model.backbone.vit.patch_embed.proj.weight.grad is not None
    assert any(k.startswith("backbone.") for k in model.trainable_state())
    assert not any(k.startswith("backbone.") for k in segmentor().trainable_state())


def test_spatial_slots_need_fused_qkv_attention() -> None:
    backbone = tiny_backbone()
    for block in backbone.vit.blocks:
        block.attn = nn.MultiheadAttention(32, 2)
    with pytest.raises(UserError):
        Segmentor(backbone, NUM_CLASSES, ToolboxConfig(), head_channels=16)
    Segmentor(backbone, NUM_CLASSES, ToolboxConfig(types=("semantic", "frequency")), head_channels=16)


# ---------------------------------------------------------------- artefacts: save -> rebuild -> load

CLASSES = ["background", "building", "road"]
PALETTE = [[0, 0, 0], [255, 0, 0], [0, 0, 255]]
ARTEFACT_BACKBONE = "test_vit"  # timm's own tiny ViT: build_backbone can build it by name


def seeded_segmentor(seed: int, config: ToolboxConfig, active: list[str]) -> Segmentor:
    backbone = build_seeded_backbone(ARTEFACT_BACKBONE, "none", 32, None, seed)
    model = Segmentor(backbone, len(CLASSES), config, head="fpn", head_channels=16)
    model.toolbox.set_active(active)
    return model


def save(model: Segmentor, path: Path, seed: int) -> Path:
    spec = spec_of(model, CLASSES, PALETTE, seed, 32, "fpn", 16)
    return save_trainable(path, model, spec)


def test_save_rebuild_load_gives_identical_logits(tmp_path: Path) -> None:
    active = ["spatial.0", "semantic.3", "frequency.5"]
    model = seeded_segmentor(7, ToolboxConfig(lora_rank=3), active)
    perturb(model.toolbox, seed=1, std=0.1)
    perturb(model.head, seed=2, std=0.1)
    model.eval()
    path = save(model, tmp_path / "model.safetensors", seed=7)
    torch.manual_seed(123)  # the rebuild must not depend on the global RNG
    loaded, spec = load_trainable(path)
    assert spec.active == active and loaded.toolbox.active_slots() == active
    assert spec.toolbox["lora_rank"] == 3 and spec.classes == CLASSES
    assert not loaded.training
    x = images(32, 48)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(loaded(x), expected)
        # and the saved weights are what made the difference: a fresh build with the seed alone differs
        fresh = seeded_segmentor(7, ToolboxConfig(lora_rank=3), active).eval()
        assert not torch.allclose(fresh(x), expected, atol=1e-4)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[key], value), key


def test_mismatched_artefact_is_rejected(tmp_path: Path) -> None:
    small = seeded_segmentor(0, ToolboxConfig(lora_rank=2), ["spatial.1"])
    big = seeded_segmentor(0, ToolboxConfig(lora_rank=4), ["spatial.1"])
    spec_big = spec_of(big, CLASSES, PALETTE, 0, 32, "fpn", 16)
    path = save_trainable(tmp_path / "mixed.safetensors", small, spec_big)
    with pytest.raises(UserError, match="mixed.safetensors"):
        load_trainable(path)
    # never-trained slots are not stored, but a slot the spec says is active must have its weights
    fewer_types = seeded_segmentor(0, ToolboxConfig(lora_rank=4, types=("spatial",)), ["spatial.1"])
    both_active = seeded_segmentor(0, ToolboxConfig(lora_rank=4), ["spatial.1", "semantic.1"])
    spec_both = spec_of(both_active, CLASSES, PALETTE, 0, 32, "fpn", 16)
    path = save_trainable(tmp_path / "types.safetensors", fewer_types, spec_both)
    with pytest.raises(UserError, match=r"types.safetensors.*missing \['toolbox.slots.semantic.1"):
        load_trainable(path)
    consistent = save_trainable(tmp_path / "spatial_only.safetensors", fewer_types, spec_big)
    assert load_trainable(consistent)[1].active == ["spatial.1"]  # the untrained types' slots were never stored


def test_missing_or_corrupt_artefact_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_trainable(tmp_path / "nothing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="junk.safetensors"):
        load_trainable(junk)
    model = seeded_segmentor(0, ToolboxConfig(), [])
    good = save(model, tmp_path / "good.safetensors", seed=0)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match="cut.safetensors"):
        load_trainable(cut)


def test_a_model_refuses_backbone_weights_other_than_those_it_was_trained_on(tmp_path: Path) -> None:
    """The spec records the weights file's sha256: the same source resolving to other bytes is an error."""
    weights = tmp_path / "backbone.safetensors"
    trained_on = build_seeded_backbone(ARTEFACT_BACKBONE, "none", 32, None, seed=1)
    save_file({k: v.contiguous() for k, v in trained_on.vit.state_dict().items()}, str(weights))
    backbone = build_seeded_backbone(ARTEFACT_BACKBONE, str(weights), 32, None, seed=0)
    model = Segmentor(backbone, len(CLASSES), ToolboxConfig(), head="fpn", head_channels=16)
    path = save(model, tmp_path / "model.safetensors", seed=0)
    assert read_spec(path).backbone_sha256 == backbone.info.weights_record.sha256
    load_trainable(path)  # the same file: fine
    other = build_seeded_backbone(ARTEFACT_BACKBONE, "none", 32, None, seed=2)
    save_file({k: v.contiguous() for k, v in other.vit.state_dict().items()}, str(weights))
    with pytest.raises(UserError, match=r"other than the one this model was trained on.*--weights"):
        load_trainable(path)
    loaded, _ = load_trainable(path, weights=str(weights))  # an explicit choice is the user's to make
    assert torch.equal(loaded.backbone.vit.pos_embed, other.vit.pos_embed)


def test_trainable_files_keep_the_key_names_they_had_before_lora_wrapped_qkv(tmp_path: Path) -> None:
    """LoRA lives in the toolbox and the qkv wrapper keeps the Linear's names: files from before still load."""
    model = seeded_segmentor(3, ToolboxConfig(lora_rank=2), ["spatial.1"])
    model.backbone.set_finetune(True)
    perturb(model.toolbox, seed=1, std=0.1)
    state = {k: v.detach().clone() for k, v in model.trainable_state().items()}
    before_the_wrapper = [f"toolbox.slots.spatial.1.{m}" for m in ("a_q", "b_q", "a_v", "b_v")] + [
        "backbone.vit.blocks.1.attn.qkv.weight", "backbone.vit.blocks.1.attn.qkv.bias"]
    assert set(before_the_wrapper) <= set(state)
    assert not any(".lora" in k or "base_layer" in k for k in state)
    spec = spec_of(model, CLASSES, PALETTE, 3, 32, "fpn", 16)
    path = save_trainable(tmp_path / "old_names.safetensors", model, spec)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={
        "format": "crossearth-gate/1", "spec": json.dumps(asdict(spec))})  # written key by key, as before
    loaded, _ = load_trainable(path)
    x = images(32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), atol=0, rtol=0)
