"""More than three bands from a YAML definition alone, through the real CLI: a 4-band uint16 B, G, R, NIR
GeoTIFF with nodata → ``fit`` (the patch embedding grows, the NIR kernel trains and is counted) → test metrics
→ ``predict`` (same bands, same statistics, georeferenced) → ONNX export → ``predict --model model.onnx``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from crossearth_gate.cli import main
from crossearth_gate.data.radiometry import Radiometry, display_rgb
from crossearth_gate.model.artefacts import load_trainable
from crossearth_gate.training.metrics import SegMetrics
from support.bad_inputs import cli
from support.rasters import buildings, write_config, write_raster
from support.tiny import tiny_run

TINY_RASTER_RUN = tiny_run("raster")
SIZE = 64
EMBED, PATCH = 32, 14  # the raster run's ViT in tests/configs/tiny.yaml
# stored B, G, R, NIR (as many sensors write them): R, G, B are the 3rd, 2nd and 1st picked channels
DEFINITION = {"bands": [1, 2, 3, 4], "rgb_bands": [3, 2, 1]}
KERNELS = [2, 1, 0, -1]  # blue takes the pretrained B kernel (2), red the R kernel (0), NIR a new one


def four_band(root: Path, stem: str, seed: int, corner: int = 0) -> tuple[Path, Path, np.ndarray]:
    """B, G, R, NIR with buildings brighter in NIR; a ``corner`` x ``corner`` nodata block (all bands 0)."""
    rng = np.random.default_rng(seed)
    label = np.zeros((SIZE, SIZE), np.uint8)
    label[SIZE // 4: SIZE // 2, SIZE // 4: 3 * SIZE // 4] = 255
    label[40:56, 8:30] = 255
    data = rng.integers(200, 900, (4, SIZE, SIZE)).astype(np.uint16)
    data[3, label == 255] += 1500
    data[:, :corner, :corner] = 0
    image = write_raster(root / "images" / f"{stem}.tif", data, nodata=0)
    return image, write_raster(root / "labels" / f"{stem}.tif", label[None], georeferenced=False), data


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("multiband")
    four_band(root / "train", "a", 0)
    four_band(root / "train", "b", 1, corner=6)
    image, label, _ = four_band(root / "test", "c", 2, corner=9)
    definition = buildings(**DEFINITION)
    config = write_config(root / "own.yaml", {"dataset": definition, "root": str(root / "train")},
                          {"c": {"dataset": definition, "root": str(root / "test")}}, val_fraction=0.0)
    out = root / "run"
    assert main(["fit", "--config", str(config), "--out", str(out), *TINY_RASTER_RUN,
                 "eval.samples_per_domain=1", "train.lr=0.01"]) == 0
    return {"root": root, "run": out, "image": image, "label": label}


def test_fit_grows_the_embedding_and_trains_the_nir_kernel(run: dict[str, Path]) -> None:
    out = run["run"]
    model, spec = load_trainable(out / "trainable.safetensors")
    assert spec.band_kernels == KERNELS
    assert spec.radiometry is not None and spec.radiometry["bands"] == [1, 2, 3, 4]
    assert spec.radiometry["rgb_bands"] == [3, 2, 1] and spec.radiometry["mode"] == "statistics"
    extra = load_file(str(out / "trainable.safetensors"))["backbone.vit.patch_embed.proj.extra"]
    assert extra.shape == (EMBED, 1, PATCH, PATCH)
    assert extra.abs().sum() > 0, "the NIR kernel started at zero: it moved, so it received gradient"
    params = json.loads((out / "metrics.json").read_text())["params"]
    assert params["bands"] == EMBED * PATCH * PATCH
    ever = {".".join(key.split(".")[2:4]) for key in load_file(str(out / "trainable.safetensors"))
            if key.startswith("toolbox.")}
    assert params["trainable"] == params["head"] + params["bands"] + sum(params["per_slot"][s] for s in ever)


def test_statistics_of_four_bands_match_brute_force(run: dict[str, Path]) -> None:
    """Per band over the valid training pixels (both scenes are under STATS_SIDE: no decimation)."""
    radiometry = yaml.safe_load((run["run"] / "data.yaml").read_text())["radiometry"]
    pixels = []
    for stem in ("a", "b"):
        with rasterio.open(run["root"] / "train" / "images" / f"{stem}.tif") as src:
            data = src.read().astype(np.float64)
        pixels.append(data[:, (data != 0).any(axis=0)])
    values = np.concatenate(pixels, axis=1)
    np.testing.assert_allclose(radiometry["mean"], values.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(radiometry["std"], values.std(axis=1), rtol=1e-6)


def test_predict_reproduces_the_test_metrics_on_the_scene_grid(run: dict[str, Path]) -> None:
    """predict reads the same 4 bands with the saved statistics: its map gives the run's own test mIoU."""
    out = run["root"] / "pred"
    assert main(["predict", str(run["image"]), "-m", str(run["run"]), "-o", str(out), "--window", "28",
                 "--overlap", "0", "--no-merge", "--overlay"]) == 0
    with rasterio.open(out / "c_pred.tif") as pred, rasterio.open(run["image"]) as src:
        assert (pred.crs, pred.transform) == (src.crs, src.transform)
        classes = pred.read(1)
    with rasterio.open(run["label"]) as src:
        truth = (src.read(1) == 255).astype(np.int64)
    assert (classes[:9, :9] == 255).all() and (classes[9:, :] != 255).all()
    valid = classes != 255
    metrics = SegMetrics(2, ["background", "building"])
    metrics.update(torch.from_numpy(classes[valid].astype(np.int64)), torch.from_numpy(truth[valid]))
    expected = json.loads((run["run"] / "metrics.json").read_text())["domains"]["c"]["mIoU"]
    assert round(float(metrics.compute()["mIoU"]), 2) == expected
    with Image.open(out / "c_overlay.png") as overlay:
        assert overlay.mode == "RGB" and overlay.size == (SIZE, SIZE)


def test_onnx_export_has_four_channels_and_predicts_the_same_classes(run: dict[str, Path]) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    root = run["root"]
    path = root / "model.onnx"
    assert main(["export", str(run["run"]), "--format", "onnx", "--out", str(path)]) == 0
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["bands"]) == ["band 1 (blue)", "band 2 (green)", "band 3 (red)", "band 4"]
    assert json.loads(props["input"])["shape"][1] == 4
    spec = load_trainable(run["run"] / "trainable.safetensors")[1]
    assert json.loads(props["normalisation"])["mean"] == spec.radiometry["mean"]
    for name, model in (("torch", run["run"]), ("onnx", path)):
        assert main(["predict", str(run["image"]), "-m", str(model), "-o", str(root / name), "--tile", "40"]) == 0
    with rasterio.open(root / "torch" / "c_pred.tif") as a, rasterio.open(root / "onnx" / "c_pred.tif") as b:
        assert (a.crs, a.transform) == (b.crs, b.transform)
        want, got = a.read(1), b.read(1)
    assert len(np.unique(want)) > 1
    assert (want == got).mean() >= 0.999


def test_predict_bands_must_name_one_band_per_channel(run: dict[str, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    cli(capsys, tmp_path, ["predict", run["image"], "-m", run["run"], "-o", tmp_path / "out", "--bands", "3,2,1"], 2,
        "--bands '3,2,1': expected four comma-separated 1-based band numbers (the model reads 4 channels)")
    assert not (tmp_path / "out").exists()


def _stretched(raw: np.ndarray) -> np.ndarray:
    """Independent display: each of R, G, B from its 2nd to its 98th percentile onto 0..255."""
    low, high = np.percentile(raw, (2, 98), axis=(1, 2))
    scaled = (raw - low[:, None, None]) / (high - low)[:, None, None]
    return (np.clip(scaled, 0, 1) * 255).round().transpose(1, 2, 0)


def test_sample_overlays_stretch_the_rgb_bands_not_imagenet(run: dict[str, Path]) -> None:
    """The test sample of a uint16 run shows its R, G, B bands stretched (not ImageNet-denormalised noise):
    every overlay pixel is 0.5 · display + 0.5 · some class colour."""
    radiometry = yaml.safe_load((run["run"] / "data.yaml").read_text())["radiometry"]
    with rasterio.open(run["image"]) as src:
        data = src.read().astype(np.float64)
    nodata = ~(data != 0).any(axis=0)
    data[:, nodata] = np.array(radiometry["mean"])[:, None]
    display = _stretched(data[[2, 1, 0]])  # file bands 3, 2, 1 = R, G, B
    with Image.open(run["run"] / "samples" / "c_0.png") as im:
        sample = np.asarray(im.convert("RGB")).astype(np.float64)
    palette = np.array([[0, 0, 0], [255, 0, 0]], np.float64)
    error = np.min([np.abs(2 * sample - colour - display).max(axis=-1) for colour in palette], axis=0)
    assert error.max() <= 3


def test_display_of_standardised_data_is_a_percentile_stretch() -> None:
    raw = np.random.default_rng(0).gamma(2.0, 300.0, (4, 20, 30))
    mean, std = raw.mean(axis=(1, 2)), raw.std(axis=(1, 2))
    radiometry = Radiometry("statistics", tuple(mean), tuple(std), 1.0, (1, 2, 3, 4), None, (4, 1, 2))
    shown = display_rgb(radiometry.normalise(torch.from_numpy(raw).float()), radiometry)
    assert shown.shape == (20, 30, 3) and shown.dtype == np.uint8
    assert np.abs(shown.astype(np.float64) - _stretched(raw[[3, 0, 1]])).max() <= 1


# ----------------------------------------------------------------------------- bad inputs


def _bad_fit(tmp_path: Path, source: dict, target: dict, *extra: str, **data: Any) -> list:
    four_band(tmp_path / "data", "a", 0)
    config = write_config(tmp_path / "own.yaml", {"dataset": source, "root": str(tmp_path / "data")},
                          {"t": {"dataset": target, "root": str(tmp_path / "data")}}, val_fraction=0.0, **data)
    return ["fit", "--config", config, "--out", tmp_path / "run", *TINY_RASTER_RUN, *extra]


@pytest.mark.parametrize(("source", "target", "needle"), [
    (DEFINITION, {"bands": [3, 2, 1]}, "target 't' (buildings) reads 3 channel(s) with R, G, B at positions [1, 2, 3] "
     "but the source (buildings) reads 4 with R, G, B at [3, 2, 1]: every domain of a run needs the same channels"),
    (DEFINITION, {"bands": [1, 2, 3, 4]}, "every domain of a run needs the same channels"),
    ({"bands": [4]}, {"bands": [4]}, "bands: 1 channel(s) [4]; give at least three, repeating a band"),
    ({"bands": [1, 2, 3, 4], "rgb_bands": [1, 1, 2]}, {"bands": [1, 2, 3, 4], "rgb_bands": [1, 1, 2]},
     "rgb_bands: three different 1-based positions in `bands` (1..4)"),
    ({**DEFINITION, "normalise": "imagenet"}, {**DEFINITION, "normalise": "imagenet"},
     "normalise: imagenet needs three channels in R, G, B order"),
    ({**DEFINITION, "fit_size": 32}, {**DEFINITION, "fit_size": 32}, "`fit_size` applies to JPEG/PNG images only"),
])
def test_bad_band_definitions_are_one_line_and_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             source: dict, target: dict, needle: str) -> None:
    argv = _bad_fit(tmp_path, buildings(**source), buildings(**target))
    cli(capsys, tmp_path, argv, 2, needle)
    assert not (tmp_path / "run").exists()


def test_dacs_refuses_grown_bands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    definition = buildings(**DEFINITION)
    argv = _bad_fit(tmp_path, definition, definition, "train.adaptation=dacs",
                    unlabelled_target={"dataset": definition, "root": str(tmp_path / "data")})
    cli(capsys, tmp_path, argv, 2, "train.adaptation=dacs needs three channels in R, G, B order")
    assert not (tmp_path / "run").exists()


def test_checkpoints_keep_the_trained_band_kernels() -> None:
    """The frozen backbone is left out of checkpoints, but the new bands' kernels train: a resumed run and the
    source-selected best checkpoint must get them back, not the zeros they started at."""
    from crossearth_gate.config.schema import load_config
    from crossearth_gate.training.task import SegmentationTask

    cfg = load_config("demo", ["model.backbone=test_vit", "model.weights=none", "data.crop_size=32"])
    classes, palette = ["a", "b"], [(0, 0, 0), (255, 0, 0)]
    task = SegmentationTask(cfg, classes, palette, [], band_kernels=KERNELS)
    extra = task.model.backbone.vit.patch_embed.proj.extra
    with torch.no_grad():
        extra.add_(torch.randn(extra.shape, generator=torch.Generator().manual_seed(0)))
    checkpoint = {"state_dict": task.state_dict()}
    task.on_save_checkpoint(checkpoint)
    saved = [k for k in checkpoint["state_dict"] if k.startswith("model.backbone.")]
    assert saved == ["model.backbone.vit.patch_embed.proj.extra"]
    fresh = SegmentationTask(cfg, classes, palette, [], band_kernels=KERNELS)
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])
    assert torch.equal(fresh.model.backbone.vit.patch_embed.proj.extra, extra)
