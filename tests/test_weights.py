"""Backbone weights in every layout: Hugging Face, ONNX exports, conversion with provenance, the CLI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from crossearth_gate.cli import main
from crossearth_gate.model.backbone import build_backbone
from crossearth_gate.util.errors import UserError
from crossearth_gate.weights import convert, read_backbone_weights, read_provenance
from crossearth_gate.weights.huggingface import huggingface_to_official
from support.hf_dinov2 import PATCH, Dinov2Model
from support.onnx_reference import assert_timm_reproduces_onnx, export_onnx
from support.tiny import tiny_model

VIT = tiny_model("vit_2_blocks")
GRID = 3  # the tiny HF model's stored position grid: 42×42 inputs need no resampling


def timm_name(registers: int) -> str:
    return "vit_small_patch14_reg4_dinov2" if registers else "vit_small_patch14_dinov2"


def save_hf(model: Dinov2Model, path: Path, prefix: str = "") -> None:
    state = {prefix + k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if prefix:  # a task model: backbone under the prefix, its own head beside it
        state["classifier.weight"] = torch.zeros(3, 64)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)


# ---------------------------------------------------------------- Hugging Face layout


@pytest.mark.parametrize("registers", [0, 4])
@pytest.mark.parametrize(("filename", "prefix"), [("model.safetensors", ""), ("pytorch_model.bin", ""),
                                                   ("model.safetensors", "dinov2.")])
def test_huggingface_checkpoint_matches_reference_forward(registers: int, filename: str, prefix: str,
                                                          tmp_path: Path) -> None:
    hf = Dinov2Model(grid=GRID, registers=registers, seed=registers + 1).eval()
    path = tmp_path / filename
    save_hf(hf, path, prefix)
    backbone = build_backbone(timm_name(registers), str(path), img_size=GRID * PATCH, model_kwargs=VIT)
    x = torch.randn(2, 3, GRID * PATCH, GRID * PATCH, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf(x)
        got = backbone.vit.forward_features(x)
    assert got.shape == expected.shape == (2, 1 + registers + GRID * GRID, 32)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert backbone.info.weights_record.source == "file"


def test_huggingface_qkv_is_fused_in_query_key_value_order() -> None:
    hf = Dinov2Model(grid=GRID)
    official = huggingface_to_official(dict(hf.state_dict()))
    attn = hf.encoder.layer[1].attention.attention
    expected = torch.cat([attn.query.weight, attn.key.weight, attn.value.weight])
    assert torch.equal(official["blocks.1.attn.qkv.weight"], expected)
    assert torch.equal(official["blocks.0.ls2.gamma"], hf.encoder.layer[0].layer_scale2.lambda1)
    assert "mask_token" in official and "norm.weight" in official


def test_huggingface_unknown_or_incomplete_keys_are_one_line_errors() -> None:
    state = dict(Dinov2Model(grid=GRID).state_dict())
    with pytest.raises(UserError, match=r"unknown Hugging Face Dinov2 keys \(1, e\.g\. pooler\.dense\.weight\)"):
        huggingface_to_official({**state, "pooler.dense.weight": torch.zeros(1)})
    state.pop("encoder.layer.1.attention.attention.value.bias")
    with pytest.raises(UserError, match="layer 1 has no attention value bias"):
        huggingface_to_official(state)


# ---------------------------------------------------------------- ONNX exports


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dinov2Model, Path]:
    pytest.importorskip("onnx")
    hf = Dinov2Model(grid=GRID, seed=5).eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny_focus.onnx"
    export_onnx(hf, path, size=4 * PATCH)  # 4×4 patches: the graph interpolates the 3×3 grid itself
    return hf, path


def test_onnx_export_converts_to_the_same_tensors_as_its_torch_model(tiny_onnx: tuple, tmp_path: Path) -> None:
    hf, path = tiny_onnx
    from_onnx, layout = read_backbone_weights(path, uses_no_embed_class=False)
    hf_path = tmp_path / "model.safetensors"
    save_hf(hf, hf_path)
    from_hf, _ = read_backbone_weights(hf_path, uses_no_embed_class=False)
    assert layout == "onnx"
    from_hf.pop("mask_token", None)
    assert set(from_onnx) == set(from_hf)
    for key, value in from_hf.items():
        assert torch.equal(from_onnx[key], value), key


def test_converted_onnx_backbone_reproduces_onnxruntime(tiny_onnx: tuple, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    _, path = tiny_onnx
    out = tmp_path / "tiny.safetensors"
    meta = convert(str(path), out, "vit_small_patch14_dinov2", VIT)
    assert meta["source_layout"] == "onnx" and meta["layout"] == "timm"
    assert_timm_reproduces_onnx(out, path, 4 * PATCH, VIT, atol=1e-4)


def test_onnx_without_dinov2_is_a_one_line_error(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    path = tmp_path / "linear.onnx"
    torch.onnx.export(torch.nn.Linear(3, 2), (torch.zeros(1, 3),), str(path), dynamo=False)
    with pytest.raises(UserError, match=r"linear\.onnx: not an ONNX export of a Hugging Face Dinov2 model"):
        read_backbone_weights(path, uses_no_embed_class=False)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not onnx at all" * 10)
    with pytest.raises(UserError, match=r"garbage\.onnx: unreadable ONNX file"):
        read_backbone_weights(garbage, uses_no_embed_class=False)


def test_onnx_with_an_unidentified_position_embedding_is_refused(tiny_onnx: tuple, tmp_path: Path) -> None:
    import onnx

    _, path = tiny_onnx
    model = onnx.load(str(path))
    grid_constants = {i.name for i in model.graph.initializer if i.name.startswith("onnx::") and len(i.dims) == 3}
    for node in model.graph.node:
        if node.op_type == "Reshape" and grid_constants & set(node.input):
            node.op_type = "Flatten"  # the patch grid is no longer consumed by a Reshape
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    with pytest.raises(UserError, match="cannot identify the position embedding"):
        read_backbone_weights(broken, uses_no_embed_class=False)


# ---------------------------------------------------------------- convert: provenance, checks, CLI


def test_convert_cli_writes_loadable_safetensors_with_provenance(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    hf = Dinov2Model(grid=GRID, registers=4, seed=3).eval()
    source = tmp_path / "pytorch_model.bin"
    save_hf(hf, source, prefix="dinov2.")
    out = tmp_path / "converted.safetensors"
    code = main(["weights", "convert", str(source), "--out", str(out), "--backbone", "vit_small_patch14_reg4_dinov2",
                 "--backbone-kwargs", "{embed_dim: 32, depth: 2, num_heads: 2}"])
    assert code == 0
    assert "huggingface layout" in capsys.readouterr().out
    meta = read_provenance(out)
    assert meta["backbone"] == "vit_small_patch14_reg4_dinov2" and meta["source_layout"] == "huggingface"
    assert re.fullmatch(r"[0-9a-f]{64}", meta["source_sha256"]) and "Apache-2.0" in meta["licences"]
    backbone = build_backbone("vit_small_patch14_reg4_dinov2", str(out), img_size=GRID * PATCH, model_kwargs=VIT)
    x = torch.randn(1, 3, GRID * PATCH, GRID * PATCH)
    with torch.no_grad():
        torch.testing.assert_close(backbone.vit.forward_features(x), hf(x), atol=1e-5, rtol=1e-5)


def test_convert_infers_the_dinov2_model_from_the_width(tmp_path: Path) -> None:
    from crossearth_gate.weights.convert import infer_backbone

    assert infer_backbone({"cls_token": torch.zeros(1, 1, 384)}) == "vit_small_patch14_dinov2"
    assert infer_backbone({"cls_token": torch.zeros(1, 1, 1024), "reg_token": torch.zeros(1, 4, 1024)}) == \
        "vit_large_patch14_reg4_dinov2"
    with pytest.raises(UserError, match="width 32"):
        infer_backbone({"cls_token": torch.zeros(1, 1, 32)})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["absent.bin", "--out", "x.safetensors"], r"absent\.bin: checkpoint file not found"),
        (["model.bin", "--out", "x.pth"], "must be a .safetensors file"),
        (["model.bin", "--out", "x.safetensors", "--backbone", "vit_small_patch14_dinov2"],
         "checkpoint does not match the model"),
        (["model.bin", "--out", "x.safetensors", "--backbone", "vit_small_patch14_dinov2", "--backbone-kwargs",
          "{depth: 2, embed_dim: 32, num_heads: 2, no_such_arg: 1}"], "cannot build timm model"),
    ],
)
def test_convert_errors_are_one_line(args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    save_hf(Dinov2Model(grid=GRID), tmp_path / "model.bin")
    assert main(["weights", "convert", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "x.safetensors").exists()
