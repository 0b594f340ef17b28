"""``export --format onnx`` and ``predict --model model.onnx``: one graph with every slot type, parity with
PyTorch on demo tiles, inactive slots dropped, and one-line errors for bad inputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image

from crossearth_gate.cli import main
from crossearth_gate.data.transforms import EvalTransform
from crossearth_gate.model.artefacts import load_trainable, save_trainable, spec_of
from crossearth_gate.model.backbone import build_backbone
from crossearth_gate.model.inference import sliding_window_logits
from crossearth_gate.model.segmentor import Segmentor
from crossearth_gate.toolbox.frequency import frequency_split, matrix_frequency_split
from crossearth_gate.toolbox.slots import ToolboxConfig
from support.paths import DEMO

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from crossearth_gate.export.runtime import OnnxRunner  # noqa: E402 - after the skip

CLASSES = ["background", "building", "road"]
PALETTE = [[10, 20, 30], [200, 40, 40], [40, 200, 40]]
WINDOW = 64  # test_vit: patch 16, a 4x4 token grid, so the frequency band is more than one bin
EVERY_TYPE = ["spatial.0", "spatial.3", "semantic.2", "semantic.4", "frequency.1", "frequency.5"]
DEMO_TILE = DEMO / "tile_1"


def make_run(root: Path, active: list[str], head: str = "fpn") -> Path:
    """A run dir with a tiny trained-looking model: every slot perturbed off its zero init."""
    torch.manual_seed(0)
    toolbox = ToolboxConfig(frequency_cutoff=0.5)
    channels = 32 if head == "mask2former" else 16  # Mask2Former's group norms need multiples of 32
    model = Segmentor(build_backbone("test_vit", "none", WINDOW), len(CLASSES), toolbox, head, channels)
    with torch.no_grad():
        for param in [*model.toolbox.parameters(), *model.head.parameters()]:
            param.add_(0.1 * torch.randn_like(param))
    model.toolbox.set_active(active)
    root.mkdir(parents=True, exist_ok=True)
    save_trainable(root / "trainable.safetensors", model, spec_of(model, CLASSES, PALETTE, 0, WINDOW, head, channels))
    return root


def export(*argv: str | Path) -> int:
    return main(["export", *map(str, argv)])


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("onnx")
    run = make_run(root / "run", EVERY_TYPE)
    assert export(run, "--format", "onnx", "--out", root / "model.onnx") == 0
    return run, root / "model.onnx"


def demo_rgb() -> np.ndarray:
    """A real demo image, cropped to an odd size so windows overlap and the last ones sit flush."""
    path = sorted((DEMO_TILE / "images").iterdir())[0]
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))[:171, :203]


def test_matrix_split_equals_the_fft_split() -> None:
    """The exported route (real matrices) against the FFT route, on odd and even grids and several cutoffs."""
    torch.manual_seed(0)
    for h, w in ((4, 4), (5, 8), (16, 16), (7, 3)):
        grid = torch.randn(2, 6, h, w, dtype=torch.float64)
        for cutoff in (0.1, 0.25, 0.5, 1.0):
            for got, want in zip(matrix_frequency_split(grid, cutoff), frequency_split(grid, cutoff), strict=True):
                torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_metadata_carries_what_predict_needs(exported: tuple[Path, Path]) -> None:
    run, path = exported
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["format"] == "crossearth-gate-onnx/1"
    assert json.loads(props["classes"]) == CLASSES and json.loads(props["palette"]) == PALETTE
    assert json.loads(props["window"]) == WINDOW and json.loads(props["bands"]) == ["red", "green", "blue"]
    _, spec = load_trainable(run / "trainable.safetensors")
    norm = json.loads(props["normalisation"])
    assert norm["mean"] == spec.mean and norm["std"] == spec.std
    assert json.loads(props["folded_lora"]) == ["spatial.0", "spatial.3"]
    assert json.loads(props["graph_slots"]) == ["semantic.2", "semantic.4", "frequency.1", "frequency.5"]


def test_logits_and_classes_match_pytorch_on_a_demo_tile(exported: tuple[Path, Path]) -> None:
    """Same sliding window, same blending: onnxruntime's logits within 1e-4 of PyTorch's (unmerged, so the
    fold is checked too), class maps equal on >= 99.99 % of the pixels."""
    run, path = exported
    model, spec = load_trainable(run / "trainable.safetensors")
    image, _ = EvalTransform(tuple(spec.mean), tuple(spec.std))(demo_rgb(), None)
    runner = OnnxRunner(path)
    with torch.inference_mode():
        want = sliding_window_logits(model.eval(), image, WINDOW, 40, len(CLASSES), batch_size=3)
        got = sliding_window_logits(runner, image, WINDOW, 40, len(CLASSES), batch_size=5)
    assert want.std() > 0.05  # logits that vary: the comparison is not between constants
    assert (got - want).abs().max().item() < 1e-4
    classes_want, classes_got = want.argmax(0), got.argmax(0)
    assert len(classes_want.unique()) > 1
    assert (classes_want == classes_got).float().mean().item() >= 0.9999


def test_predict_onnx_geotiff_matches_pytorch(exported: tuple[Path, Path], tmp_path: Path) -> None:
    """``predict --model model.onnx`` on a GeoTIFF of a demo image: same raster, same classes as PyTorch."""
    run, path = exported
    rgb = demo_rgb().transpose(2, 0, 1)
    profile = {"driver": "GTiff", "count": 3, "height": rgb.shape[1], "width": rgb.shape[2], "dtype": "uint8",
               "crs": "EPSG:32640", "transform": rasterio.transform.from_origin(300000, 2800000, 0.3, 0.3)}
    with rasterio.open(tmp_path / "scene.tif", "w", **profile) as dst:
        dst.write(rgb)
    for name, model in (("torch", run), ("onnx", path)):
        assert main(["predict", str(tmp_path / "scene.tif"), "-m", str(model), "-o", str(tmp_path / name),
                     "--tile", "100"]) == 0
    with rasterio.open(tmp_path / "torch" / "scene_pred.tif") as a, rasterio.open(tmp_path / "onnx" /
                                                                                  "scene_pred.tif") as b:
        assert (a.crs, a.transform) == (b.crs, b.transform) and b.colormap(1)[1][:3] == tuple(PALETTE[1])
        want, got = a.read(1), b.read(1)
    assert len(np.unique(want)) > 1
    assert (want == got).mean() >= 0.9999


def test_mask2former_head_exports_with_parity(tmp_path: Path) -> None:
    """Mask2Former's decoder and its semantic inference (class x mask mixture) trace into the same graph."""
    pytest.importorskip("transformers")
    run = make_run(tmp_path / "run", EVERY_TYPE, "mask2former")
    assert export(run, "--format", "onnx", "--out", tmp_path / "m2f.onnx") == 0
    model, _ = load_trainable(run / "trainable.safetensors")
    batch = torch.randn(3, 3, WINDOW, WINDOW)
    with torch.inference_mode():
        want = model.eval()(batch)
    got = OnnxRunner(tmp_path / "m2f.onnx")(batch)
    assert want.std() > 0.01 and (got - want).abs().max().item() < 1e-4


def graph_weights(path: Path) -> tuple[set[str], int]:
    """The slots whose weights or nodes appear in the graph, and the graph's number of stored values."""
    graph = onnx.load(str(path)).graph
    names = [init.name for init in graph.initializer] + [node.name for node in graph.node]
    slots = {".".join(name.split("slots")[1].strip("./").replace("/", ".").split(".")[:2])
             for name in names if "slots" in name}
    return slots, sum(int(np.prod(init.dims)) for init in graph.initializer)


def test_inactive_slots_are_not_in_the_graph(tmp_path: Path) -> None:
    """Only the active slots reach the graph: LoRA folded leaves no weight behind, an active adapter adds
    exactly its own weights over the bare backbone + head, and the 34 inactive slots add nothing."""
    counts = {}
    for name, active in (("gated", ["spatial.1", "semantic.2"]), ("bare", [])):
        run = make_run(tmp_path / name, active)
        assert export(run, "--format", "onnx", "--out", tmp_path / f"{name}.onnx") == 0
        slots, counts[name] = graph_weights(tmp_path / f"{name}.onnx")
        assert slots == ({"semantic.2"} if active else set())
    model, _ = load_trainable(tmp_path / "gated" / "trainable.safetensors")
    assert counts["gated"] - counts["bare"] == sum(p.numel() for p in model.toolbox.slot_parameters("semantic.2"))


def test_bad_format_window_and_missing_runtime(exported: tuple[Path, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    run, path = exported
    assert export(run, "--format", "tflite", "--out", tmp_path / "m.onnx") == 2
    assert export(run, "--format", "onnx", "--window", "72", "--out", tmp_path / "m.onnx") == 2
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    assert export(run, "--format", "onnx", "--out", tmp_path / "m.onnx") == 2
    Image.fromarray(demo_rgb()).save(tmp_path / "a.png")
    assert main(["predict", str(tmp_path / "a.png"), "-m", str(path), "-o", str(tmp_path / "p")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4, lines
    assert "--format 'tflite'" in lines[0] and "onnx" in lines[0]
    assert "--window 72" in lines[1] and "16" in lines[1]
    for line in lines[2:]:
        assert "onnxruntime" in line and "crossearth-gate[onnx]" in line
    assert not (tmp_path / "m.onnx").exists()
