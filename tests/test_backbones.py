"""Frozen ViT backbones: features match timm's forward, and local weights load (official DINOv2 layout too)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from torch import Tensor

from crossearth_gate.model.backbone import FrozenViT, build_backbone, default_out_indices
from crossearth_gate.util.errors import UserError
from crossearth_gate.weights import load_checkpoint, read_state_dict
from crossearth_gate.weights.official import official_to_timm
from support.models import TINY_WIDTH, images, info_of, tiny_backbone, tiny_timm_vit

OFFICIAL_GRID = 37  # DINOv2 checkpoints carry position embeddings for 518×518 inputs (37×37 patches)


# ---------------------------------------------------------------- features


@pytest.mark.parametrize(("kind", "size"), [("dinov2", (28, 56)), ("plain", (48, 32)), ("reg", (42, 42))])
def test_last_feature_equals_timm_forward_features(kind: str, size: tuple[int, int]) -> None:
    backbone = tiny_backbone(kind)
    x = images(*size)
    with torch.no_grad():
        feats = backbone(x)
        tokens = backbone.vit.forward_features(x)
    p, prefix = backbone.patch_size, backbone.info.num_prefix_tokens
    expected = tokens[:, prefix:].transpose(1, 2).reshape(2, TINY_WIDTH, size[0] // p, size[1] // p)
    torch.testing.assert_close(feats[-1], expected, atol=1e-5, rtol=0)


def test_out_indices_select_depths() -> None:
    backbone = tiny_backbone(out_indices=[1, 3])
    with torch.no_grad():
        two = backbone(images(28, 28))
        all_four = tiny_backbone()(images(28, 28))
    assert len(two) == 2
    torch.testing.assert_close(two[0], all_four[1], atol=0, rtol=0)
    torch.testing.assert_close(two[1], all_four[3], atol=0, rtol=0)


def test_default_out_indices_and_validation() -> None:
    assert default_out_indices(12) == [2, 5, 8, 11]
    assert default_out_indices(24) == [5, 11, 17, 23]
    vit = tiny_timm_vit()
    with pytest.raises(UserError, match="outside"):
        FrozenViT(vit, info_of(vit, "tiny"), out_indices=[0, 4])
    with pytest.raises(UserError, match="not a ViT"):
        FrozenViT(torch.nn.Linear(2, 2), info_of(vit, "tiny"))


@pytest.mark.parametrize("depth", [2, 3])
def test_a_backbone_shallower_than_the_head_levels_is_one_line(depth: int) -> None:
    """Fewer blocks than head levels: the default indices repeat a block, and the segmentor says so in one
    line (it used to fail in the head's forward with a traceback)."""
    from crossearth_gate.model.segmentor import Segmentor
    from crossearth_gate.toolbox.slots import ToolboxConfig

    backbone = build_backbone("test_vit", "none", 32, model_kwargs={"depth": depth})
    with pytest.raises(UserError, match=f"has {depth} blocks") as err:
        Segmentor(backbone, 3, ToolboxConfig(), "fpn", 16)
    assert "\n" not in str(err.value)


def test_backbone_is_frozen() -> None:
    backbone = tiny_backbone()
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.set_finetune(True)
    assert all(p.requires_grad for p in backbone.parameters())


def test_unknown_model_name() -> None:
    with pytest.raises(UserError, match="no_such_vit"):
        build_backbone("no_such_vit")


def test_build_backbone_by_name() -> None:
    backbone = build_backbone("test_vit", img_size=32)
    assert backbone.info.embed_dim == 64 and backbone.info.depth == 6 and backbone.info.patch_size == 16
    assert backbone.info.weights == "none" and backbone.info.weights_record.source == "random"
    assert backbone.out_indices == [0, 2, 3, 5]
    assert [f.shape for f in backbone(images(32, 64))] == [(2, 64, 2, 4)] * 4


# ---------------------------------------------------------------- official DINOv2 layout


def official_dinov2(kind: str, seed: int = 3) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(official-layout state, the timm state it must become) for a tiny model at the 37×37 grid."""
    source = tiny_timm_vit(kind, img_size=14 * OFFICIAL_GRID, seed=seed)
    timm_state = {k: v.clone() for k, v in source.state_dict().items()}
    official = dict(timm_state)
    official["mask_token"] = torch.randn(1, TINY_WIDTH)
    if kind == "reg":  # official: pos_embed covers cls too, cls_token excludes its position
        cls_pos = torch.randn(1, 1, TINY_WIDTH)
        official["pos_embed"] = torch.cat([cls_pos, timm_state["pos_embed"]], dim=1)
        official["cls_token"] = timm_state["cls_token"] - cls_pos
        official["register_tokens"] = official.pop("reg_token")
    return official, timm_state


@pytest.mark.parametrize("kind", ["dinov2", "reg"])
def test_official_dinov2_checkpoint_loads_and_resamples(kind: str, tmp_path: Path) -> None:
    official, timm_state = official_dinov2(kind)
    assert official["pos_embed"].shape[1] == OFFICIAL_GRID**2 + 1
    path = tmp_path / "dinov2.pth"
    torch.save(official, path)
    vit = tiny_timm_vit(kind, seed=9)
    load_checkpoint(vit, path)
    state = vit.state_dict()
    prefix = 0 if kind == "reg" else 1
    assert state["pos_embed"].shape == (1, 4 + prefix, TINY_WIDTH)
    expected_pos = resample_abs_pos_embed(timm_state["pos_embed"], new_size=[2, 2], num_prefix_tokens=prefix)
    torch.testing.assert_close(state["pos_embed"], expected_pos, atol=1e-6, rtol=0)
    torch.testing.assert_close(state["cls_token"], timm_state["cls_token"], atol=1e-6, rtol=0)
    for key in ("blocks.1.attn.qkv.weight", "blocks.3.mlp.fc2.bias", "blocks.2.ls1.gamma", "norm.weight"):
        assert torch.equal(state[key], timm_state[key]), key
    if kind == "reg":
        assert torch.equal(state["reg_token"], official["register_tokens"])


def test_official_swiglu_names_are_renamed(tmp_path: Path) -> None:
    giant = dict(img_size=28, embed_dim=TINY_WIDTH, depth=2, num_heads=2, dynamic_img_size=True, num_classes=0)
    src = timm.create_model("vit_giant_patch14_dinov2", pretrained=False, **giant)
    official = {re.sub(r"mlp\.fc1\.", "mlp.w12.", re.sub(r"mlp\.fc2\.", "mlp.w3.", k)): v
                for k, v in src.state_dict().items()}
    assert "blocks.0.mlp.w12.weight" in official
    path = tmp_path / "giant.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in official.items()}}, path)
    dst = timm.create_model("vit_giant_patch14_dinov2", pretrained=False, **giant)
    load_checkpoint(dst, path)
    for key, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value), key


def test_official_to_timm_without_registers_only_drops_mask_token() -> None:
    state = {"cls_token": torch.ones(1, 1, 4), "pos_embed": torch.ones(1, 5, 4), "mask_token": torch.ones(1, 4)}
    out = official_to_timm(state, uses_no_embed_class=False)
    assert set(out) == {"cls_token", "pos_embed"} and out["pos_embed"].shape == (1, 5, 4)
    assert "mask_token" in state  # the input is not modified


# ---------------------------------------------------------------- timm layout, nesting, formats


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_layout_file_loads(suffix: str, tmp_path: Path) -> None:
    source = tiny_timm_vit("plain", seed=4)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    vit = tiny_timm_vit("plain", seed=5)
    assert not torch.equal(vit.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    load_checkpoint(vit, path)
    for key, value in source.state_dict().items():
        assert torch.equal(vit.state_dict()[key], value), key


def test_build_backbone_with_local_weights(tmp_path: Path) -> None:
    source = build_backbone("test_vit", img_size=32)
    path = tmp_path / "test_vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.vit.state_dict().items()}, str(path))
    torch.manual_seed(99)
    loaded = build_backbone("test_vit", weights=str(path), img_size=32)
    assert loaded.info.weights == str(path.resolve())
    record = loaded.info.weights_record
    assert record.source == "file" and record.file == str(path.resolve()) and len(record.sha256) == 64
    with torch.no_grad():
        x = images(32, 32)
        for a, b in zip(loaded(x), source(x), strict=True):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


# ---------------------------------------------------------------- broken files name the file


def test_truncated_files_raise_user_error(tmp_path: Path) -> None:
    state = tiny_timm_vit("plain").state_dict()
    full_pth, full_st = tmp_path / "full.pth", tmp_path / "full.safetensors"
    torch.save(state, full_pth)
    save_file({k: v.contiguous() for k, v in state.items()}, str(full_st))
    for full in (full_pth, full_st):
        cut = tmp_path / f"cut{full.suffix}"
        cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        with pytest.raises(UserError, match=re.escape(str(cut))):
            load_checkpoint(tiny_timm_vit("plain"), cut)


def test_mismatched_checkpoints_raise_user_error(tmp_path: Path) -> None:
    wide = tiny_timm_vit("dinov2", embed_dim=48)
    path = tmp_path / "wide.pth"
    torch.save(wide.state_dict(), path)
    with pytest.raises(UserError, match=re.escape(str(path))):
        load_checkpoint(tiny_timm_vit("dinov2"), path)
    partial = tiny_timm_vit("dinov2").state_dict()
    partial.pop("blocks.2.attn.proj.weight")
    partial["extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pth"
    torch.save(partial, path)
    with pytest.raises(UserError, match=r"partial\.pth.*missing 1 keys.*blocks\.2\.attn\.proj\.weight.*extra"):
        load_checkpoint(tiny_timm_vit("dinov2"), path)


def test_unusable_files_raise_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        read_state_dict(tmp_path / "absent.pth")
    path = tmp_path / "numbers.pth"
    torch.save({"a": 1}, path)
    with pytest.raises(UserError, match="numbers.pth"):
        read_state_dict(path)
