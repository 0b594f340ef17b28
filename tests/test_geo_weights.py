"""The official SatMAE, Scale-MAE and SAM checkpoint layouts: converted strictly, features against a reference.

Each test writes a small random checkpoint with the released file's key names and shapes (scaled down:
width 32, depth 2, a 4×4 grid), converts it with ``weights convert`` and loads it strictly. The reference
forwards below read the official state dict directly; they share no code with the package.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import Tensor

from crossearth_gate.cli import main
from crossearth_gate.model.backbone import build_backbone
from crossearth_gate.util.errors import UserError
from crossearth_gate.weights import read_provenance
from crossearth_gate.weights.convert import infer_backbone
from support.tiny import inline_yaml, tiny_model

VIT = tiny_model("vit_2_blocks")
WIDTH, DEPTH, HEADS, PATCH, GRID = VIT["embed_dim"], VIT["depth"], VIT["num_heads"], 16, 4
VIT_L = "vit_large_patch16_224"  # SatMAE's and Scale-MAE's encoder: timm's ViT-L/16 (LayerNorm eps 1e-6)


def fixed_sincos(grid: int, dim: int, res: float = 1.0) -> np.ndarray:
    """MAE's fixed 2-D sin-cos table (1 + grid², dim) with a zero class row, in numpy, w coordinate first.

    With ``res`` it is Scale-MAE's resolution-aware table: every grid coordinate multiplied by ``res``.
    """
    cols, rows = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float32) / (dim / 4.0))

    def one_axis(pos: np.ndarray) -> np.ndarray:
        angles = np.einsum("m,d->md", (pos * np.float32(res)).reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    table = np.concatenate([one_axis(cols), one_axis(rows)], axis=1)
    return np.concatenate([np.zeros((1, dim), np.float32), table], axis=0)


def encoder_state(seed: int) -> dict[str, Tensor]:
    """A random ViT encoder under the MAE encoder names (those of every released MAE-style file)."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape: int, std: float = 0.1) -> Tensor:
        return torch.randn(*shape, generator=gen) * std

    state = {
        "cls_token": r(1, 1, WIDTH),
        "pos_embed": torch.from_numpy(fixed_sincos(GRID, WIDTH))[None],
        "patch_embed.proj.weight": r(WIDTH, 3, PATCH, PATCH, std=0.02),
        "patch_embed.proj.bias": r(WIDTH),
        "norm.weight": 1 + r(WIDTH),
        "norm.bias": r(WIDTH),
    }
    for i in range(DEPTH):
        b = f"blocks.{i}."
        state.update({
            b + "norm1.weight": 1 + r(WIDTH), b + "norm1.bias": r(WIDTH),
            b + "attn.qkv.weight": r(3 * WIDTH, WIDTH), b + "attn.qkv.bias": r(3 * WIDTH),
            b + "attn.proj.weight": r(WIDTH, WIDTH), b + "attn.proj.bias": r(WIDTH),
            b + "norm2.weight": 1 + r(WIDTH), b + "norm2.bias": r(WIDTH),
            b + "mlp.fc1.weight": r(4 * WIDTH, WIDTH), b + "mlp.fc1.bias": r(4 * WIDTH),
            b + "mlp.fc2.weight": r(WIDTH, 4 * WIDTH), b + "mlp.fc2.bias": r(WIDTH),
        })
    return state


def mae_decoder(dec: int = 16) -> dict[str, Tensor]:
    """MAE's decoder keys (SatMAE's pre-training file): mask token, embed, blocks, norm, pixel prediction."""
    return {
        "mask_token": torch.zeros(1, 1, dec), "decoder_embed.weight": torch.zeros(dec, WIDTH),
        "decoder_embed.bias": torch.zeros(dec), "decoder_pos_embed": torch.zeros(1, GRID * GRID + 1, dec),
        "decoder_blocks.0.norm1.weight": torch.ones(dec), "decoder_blocks.0.attn.qkv.weight": torch.zeros(3 * dec, dec),
        "decoder_norm.weight": torch.ones(dec), "decoder_norm.bias": torch.zeros(dec),
        "decoder_pred.weight": torch.zeros(PATCH * PATCH * 3, dec), "decoder_pred.bias": torch.zeros(PATCH * PATCH * 3),
    }


def scalemae_decoder(dec: int = 16) -> dict[str, Tensor]:
    """Scale-MAE's decoder side: MAE's (without the pixel predictor), a second mask token, the FPN and FCN heads."""
    state = {k: v for k, v in mae_decoder(dec).items() if not k.startswith("decoder_pred")}
    state.update({"mask_token_decoder": torch.zeros(1, 1, dec), "fpn.fpn1.0.weight": torch.zeros(dec, dec, 2, 2),
                  "fcn_high.layers.0.weight": torch.zeros(8, dec, 3, 3),
                  "fcn_low.layers.0.weight": torch.zeros(8, dec, 3, 3)})
    return state


def save_training_checkpoint(state: dict[str, Tensor], path: Path) -> Path:
    """As MAE-style training scripts save: the weights under 'model', beside the epoch and the argparse options."""
    torch.save({"model": state, "epoch": 799, "args": argparse.Namespace(model="mae_vit_large_patch16")}, path)
    return path


def reference_features(state: dict[str, Tensor], x: Tensor, positions: Tensor, norm: str = "norm") -> Tensor:
    """A pre-norm ViT written from the official keys: conv patches + positions, class token, blocks, final norm."""
    def ln(t: Tensor, key: str) -> Tensor:
        return F.layer_norm(t, (WIDTH,), state[key + ".weight"], state[key + ".bias"], eps=1e-6)

    patches = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=PATCH)
    b, _, h, w = patches.shape
    t = patches.flatten(2).transpose(1, 2) + positions[1:]
    t = torch.cat([(state["cls_token"] + positions[:1]).expand(b, -1, -1), t], dim=1)
    head_dim = WIDTH // HEADS
    for i in range(DEPTH):
        p = f"blocks.{i}."
        qkv = F.linear(ln(t, p + "norm1"), state[p + "attn.qkv.weight"], state[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(b, -1, 3, HEADS, head_dim).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) / math.sqrt(head_dim)).softmax(-1) @ v
        t = t + F.linear(attn.transpose(1, 2).reshape(b, -1, WIDTH), state[p + "attn.proj.weight"],
                         state[p + "attn.proj.bias"])
        hidden = F.gelu(F.linear(ln(t, p + "norm2"), state[p + "mlp.fc1.weight"], state[p + "mlp.fc1.bias"]))
        t = t + F.linear(hidden, state[p + "mlp.fc2.weight"], state[p + "mlp.fc2.bias"])
    return ln(t, norm)[:, 1:].transpose(1, 2).reshape(b, WIDTH, h, w)


def convert(source: Path, out: Path, backbone: str, kwargs: str) -> int:
    return main(["weights", "convert", str(source), "--out", str(out), "--backbone", backbone,
                 "--backbone-kwargs", kwargs])


def images(height: int = GRID * PATCH, width: int = GRID * PATCH) -> Tensor:
    return torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(5))


KWARGS = inline_yaml(VIT)


# ---------------------------------------------------------------- SatMAE


def test_satmae_pretraining_file_converts_and_matches_the_reference(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    state = encoder_state(seed=1)
    source = save_training_checkpoint({**state, **mae_decoder()}, tmp_path / "fmow_pretrain.pth")
    out = tmp_path / "satmae.safetensors"
    assert convert(source, out, VIT_L, KWARGS) == 0
    assert "satmae layout" in capsys.readouterr().out
    meta = read_provenance(out)
    assert meta["source_layout"] == "satmae" and meta["backbone"] == VIT_L and "SatMAE" in meta["licences"]
    backbone = build_backbone(VIT_L, str(out), img_size=GRID * PATCH, out_indices=[DEPTH - 1], model_kwargs=VIT)
    assert backbone.info.weights_record.sha256 is not None
    assert backbone.info.mean[0] == pytest.approx(0.4182, abs=1e-4)  # SatMAE's fMoW-RGB statistics, not timm's
    official = build_backbone(VIT_L, str(source), img_size=GRID * PATCH, out_indices=[DEPTH - 1], model_kwargs=VIT)
    assert official.info.weights_record.layout == "satmae" and official.info.std == backbone.info.std
    x = images()
    with torch.no_grad():
        expected = reference_features(state, x, state["pos_embed"][0])
        torch.testing.assert_close(backbone(x)[-1], expected, atol=1e-5, rtol=1e-5)


def test_satmae_finetuned_file_takes_fc_norm_as_the_final_norm(tmp_path: Path) -> None:
    state = encoder_state(seed=2)
    finetuned = {("fc_norm." + k[5:] if k.startswith("norm.") else k): v for k, v in state.items()}
    finetuned.update({"head.weight": torch.zeros(1000, WIDTH), "head.bias": torch.zeros(1000)})
    source = save_training_checkpoint(finetuned, tmp_path / "fmow_finetune.pth")
    out = tmp_path / "satmae_ft.safetensors"
    assert convert(source, out, VIT_L, KWARGS) == 0
    backbone = build_backbone(VIT_L, str(out), img_size=GRID * PATCH, out_indices=[DEPTH - 1], model_kwargs=VIT)
    x = images()
    with torch.no_grad():
        expected = reference_features(finetuned, x, state["pos_embed"][0], norm="fc_norm")
        torch.testing.assert_close(backbone(x)[-1], expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- Scale-MAE


@pytest.mark.parametrize("gsd", [0.3, 1.0, 2.5])
def test_scalemae_file_with_gsd_positions_matches_the_reference(gsd: float, tmp_path: Path) -> None:
    state = encoder_state(seed=3)
    source = save_training_checkpoint({**state, **scalemae_decoder()}, tmp_path / "scalemae-vitlarge-800.pth")
    out = tmp_path / "scalemae.safetensors"
    assert convert(source, out, VIT_L, KWARGS) == 0
    assert read_provenance(out)["source_layout"] == "scalemae"
    backbone = build_backbone(VIT_L, str(out), img_size=GRID * PATCH, out_indices=[DEPTH - 1], model_kwargs=VIT,
                              gsd=gsd)
    assert backbone.info.mean == (0.485, 0.456, 0.406)  # ImageNet's, as Scale-MAE (timm's ViT-L/16 says 0.5)
    x = images()
    with torch.no_grad():
        positions = torch.from_numpy(fixed_sincos(GRID, WIDTH, res=gsd))
        ours = backbone(x)[-1]
        torch.testing.assert_close(ours, reference_features(state, x, positions), atol=1e-5, rtol=1e-5)
        if gsd != 1.0:  # the GSD moves the positions: the stored (gsd 1) table would give other features
            assert (ours - reference_features(state, x, state["pos_embed"][0])).abs().max() > 1e-3
        else:  # at gsd 1 Scale-MAE's table is MAE's fixed one, which the file stores
            torch.testing.assert_close(positions, state["pos_embed"][0], atol=1e-6, rtol=0)


def test_scalemae_positions_extend_to_any_grid(tmp_path: Path) -> None:
    """A 3×5 grid: columns and rows keep their ground distance (the reference table is cut from a 5×5 one)."""
    state = encoder_state(seed=4)
    source = save_training_checkpoint({**state, **scalemae_decoder()}, tmp_path / "scalemae.pth")
    out = tmp_path / "scalemae.safetensors"
    assert convert(source, out, VIT_L, KWARGS) == 0
    backbone = build_backbone(VIT_L, str(out), img_size=GRID * PATCH, out_indices=[DEPTH - 1], model_kwargs=VIT,
                              gsd=0.5)
    table = torch.from_numpy(fixed_sincos(5, WIDTH, res=0.5))
    positions = torch.cat([table[:1], table[1:].reshape(5, 5, WIDTH)[:3].reshape(15, WIDTH)])
    x = images(3 * PATCH, 5 * PATCH)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x)[-1], reference_features(state, x, positions), atol=1e-5, rtol=1e-5)


def test_the_gsd_is_recorded_with_the_model(tmp_path: Path) -> None:
    from crossearth_gate.model.artefacts import load_trainable, save_trainable, spec_of
    from crossearth_gate.model.segmentor import Segmentor
    from crossearth_gate.toolbox.slots import ToolboxConfig

    backbone = build_backbone(VIT_L, "none", img_size=GRID * PATCH, model_kwargs=VIT, gsd=0.3,
                              out_indices=[0, 1])
    model = Segmentor(backbone, 2, ToolboxConfig(), head_channels=16).eval()
    spec = spec_of(model, ["a", "b"], [[0, 0, 0], [1, 1, 1]], 0, GRID * PATCH, "fpn", 16, backbone_kwargs=VIT)
    assert spec.gsd == 0.3
    loaded, spec = load_trainable(save_trainable(tmp_path / "m.safetensors", model, spec))
    assert spec.gsd == 0.3 and loaded.backbone.info.gsd == 0.3


# ---------------------------------------------------------------- SAM


SAM = "samvit_base_patch16"
SAM_2_BLOCKS = tiny_model("sam_2_blocks")
SAM_TINY = inline_yaml(SAM_2_BLOCKS)


def test_official_sam_file_converts_and_matches_timms_forward(tmp_path: Path) -> None:
    torch.manual_seed(0)
    kwargs = SAM_2_BLOCKS
    encoder = timm.create_model(SAM, pretrained=False, num_classes=0, **kwargs).eval()
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    official = {"image_encoder." + re.sub(r"\.mlp\.fc([12])\.", r".mlp.lin\1.", k): v
                for k, v in encoder.state_dict().items() if not k.startswith("head.")}
    assert "image_encoder.blocks.0.mlp.lin1.weight" in official and "image_encoder.neck.0.weight" in official
    official.update({"prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": torch.zeros(2, 8),
                     "mask_decoder.iou_token.weight": torch.zeros(1, 8),
                     "pixel_mean": torch.zeros(3, 1, 1), "pixel_std": torch.ones(3, 1, 1)})
    source = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(official, source)
    out = tmp_path / "sam.safetensors"
    assert convert(source, out, SAM, SAM_TINY) == 0
    meta = read_provenance(out)
    assert meta["source_layout"] == "sam" and "Apache-2.0" in meta["licences"]
    backbone = build_backbone(SAM, str(out), out_indices=[0, 1], model_kwargs=kwargs)
    x = images(48, 64)
    with torch.no_grad():
        expected = encoder.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        for ours, theirs in zip(backbone(x), expected, strict=True):
            torch.testing.assert_close(ours, theirs, atol=0, rtol=0)


# ---------------------------------------------------------------- inference and one-line errors


def test_the_timm_model_is_inferred_from_layout_and_width() -> None:
    patch = {"patch_embed.proj.weight": torch.zeros(1024, 3, 1, 1)}
    assert infer_backbone(patch, "scalemae") == VIT_L
    assert infer_backbone(patch, "satmae") == VIT_L
    assert infer_backbone(patch, "sam") == "samvit_large_patch16"
    with pytest.raises(UserError, match="scalemae model has width 32"):
        infer_backbone({"patch_embed.proj.weight": torch.zeros(32, 3, 1, 1)}, "scalemae")


def _bad(case: str, path: Path) -> Path:
    state = {**encoder_state(seed=6), **scalemae_decoder()}
    if case == "unknown key":
        state["fpn_extra_head.weight"] = torch.zeros(1)
        state["something.else"] = torch.zeros(1)
    elif case == "missing key":
        del state["blocks.1.mlp.fc2.bias"]
    return save_training_checkpoint(state, path)


@pytest.mark.parametrize(("case", "backbone", "kwargs", "message"), [
    ("unknown key", VIT_L, KWARGS, r"unknown scalemae keys \(2, e\.g\. "),
    ("missing key", VIT_L, KWARGS, r"missing 1 keys \(e\.g\. blocks\.1\.mlp\.fc2\.bias\)"),
    ("wrong size", VIT_L, "{embed_dim: 64, depth: 2, num_heads: 2}", r"has shape .* expected"),
    ("wrong depth", VIT_L, "{embed_dim: 32, depth: 3, num_heads: 2}", r"missing 12 keys"),
    ("wrong layout", SAM, SAM_TINY, r"checkpoint does not match the model"),
])
def test_wrong_checkpoints_are_one_line_errors(case: str, backbone: str, kwargs: str, message: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    source = _bad(case, tmp_path / "scalemae.pth")
    out = tmp_path / "out.safetensors"
    assert convert(source, out, backbone, kwargs) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err
    assert not out.exists()


def test_gsd_needs_a_class_token_vit() -> None:
    with pytest.raises(UserError, match="does not apply to SAM"):
        build_backbone(SAM, "none", model_kwargs={"img_size": 64, "embed_dim": 32, "depth": 2, "num_heads": 2,
                                                  "window_size": 2}, gsd=0.5)
    with pytest.raises(UserError, match="one class token"):
        build_backbone("vit_small_patch14_reg4_dinov2", "none", img_size=28, model_kwargs=VIT, gsd=0.5)
