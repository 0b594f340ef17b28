"""``crossearth-gate predict``: GeoTIFF round trips, tiling, palette PNGs, folders and one-line user errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rich.progress import Progress

from crossearth_gate.cli import main
from crossearth_gate.data.transforms import EvalTransform
from crossearth_gate.model.artefacts import load_trainable, save_trainable, spec_of
from crossearth_gate.model.backbone import build_backbone
from crossearth_gate.model.inference import sliding_window_logits
from crossearth_gate.model.merge import merge_for_inference
from crossearth_gate.model.segmentor import Segmentor
from crossearth_gate.predict.geotiff import predict_geotiff
from crossearth_gate.predict.inputs import Job
from crossearth_gate.predict.model import Predictor
from crossearth_gate.predict.radiometry import scene_stretch
from crossearth_gate.toolbox.slots import ToolboxConfig
from support.paths import SHARED_DATA
from support.rasters import write_raster

CLASSES = ["background", "building", "road"]
PALETTE = [[10, 20, 30], [200, 40, 40], [40, 200, 40]]
WINDOW = 32  # test_vit: patch 16, so 2x2 tokens per window


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run dir with a tiny trained-looking model: timm's registered ``test_vit`` (64 wide, 6 blocks) with
    every slot perturbed off its zero init, so the saved spec rebuilds it by name alone."""
    torch.manual_seed(0)
    model = Segmentor(build_backbone("test_vit", "none", WINDOW), len(CLASSES), ToolboxConfig(), "fpn", 16)
    with torch.no_grad():
        for param in model.toolbox.parameters():
            param.add_(0.1 * torch.randn_like(param))
    model.toolbox.set_active(["spatial.0", "spatial.3", "semantic.2", "frequency.5"])
    run = tmp_path_factory.mktemp("run")
    save_trainable(run / "trainable.safetensors", model, spec_of(model, CLASSES, PALETTE, 0, WINDOW, "fpn", 16))
    return run


def predict(*argv: str | Path) -> int:
    return main(["predict", *map(str, argv)])


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "P"
        assert im.getpalette()[: 3 * len(PALETTE)] == [c for rgb in PALETTE for c in rgb]
        return np.array(im)


# ----------------------------------------------------------------------------- GeoTIFFs


def test_real_scene_round_trip(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scene = SHARED_DATA / "spacenet-geotiff" / "sample_geotiff.tif"
    if not scene.is_file():
        pytest.skip(f"{scene} not available")
    # The sample declares nodata=0 but has no such pixel: blank a corner so nodata handling is exercised.
    with rasterio.open(scene) as src:
        profile, data = src.profile, src.read()
    data[:, :300, :200] = 0
    with rasterio.open(tmp_path / "scene.tif", "w", **profile) as dst:
        dst.write(data)

    out = tmp_path / "out"
    assert predict(tmp_path / "scene.tif", "-m", model_dir, "-o", out, "--bands", "1,1,1", "--tile", "256",
                   "--window", "64", "--overlap", "0", "--batch-size", "64", "--overlay") == 0

    stdout = capsys.readouterr().out
    assert f"wrote {out / 'scene_pred.tif'}" in stdout and f"wrote {out / 'scene_overlay.png'}" in stdout
    with rasterio.open(scene) as src, rasterio.open(out / "scene_pred.tif") as pred:
        assert (pred.crs, pred.transform, pred.width, pred.height) == (src.crs, src.transform, src.width, src.height)
        assert pred.count == 1 and pred.dtypes[0] == "uint8" and pred.nodata == 255
        assert pred.profile["compress"] == "lzw" and pred.block_shapes == [(256, 256)]
        colormap = pred.colormap(1)
        classes = pred.read(1)
    assert [colormap[i][:3] for i in range(len(CLASSES))] == [tuple(c) for c in PALETTE]
    nodata = data[0] == 0
    assert (classes[nodata] == 255).all()
    assert (classes[~nodata] < len(CLASSES)).all()
    assert len(np.unique(classes[~nodata])) > 1  # a model that sees the scene, not a constant
    with Image.open(out / "scene_overlay.png") as im:
        assert im.mode == "RGB" and im.size == (900, 900)
    assert sorted(p.name for p in out.iterdir()) == ["scene_overlay.png", "scene_pred.tif"]  # no temp files


def test_small_tiles_equal_the_whole_scene_for_a_vit(model_dir: Path, tmp_path: Path) -> None:
    """Each tile runs exactly the whole-scene windows that touch its core, so the real ViT's class map
    must not depend on the tile size and must equal one whole-scene sliding window, pixel for pixel
    (every core pixel blends the same window logits in the same order, so even near-ties agree).
    """
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (3, 150, 97), dtype=np.uint8)
    data[:, 100:, :40] = 0
    scene = write_raster(tmp_path / "synthetic.tif", data, nodata=0)
    model, spec = load_trainable(model_dir / "trainable.safetensors")
    predictor = Predictor(merge_for_inference(model).eval(), spec, WINDOW, 21, 8, torch.device("cpu"))
    maps = {}
    with torch.inference_mode(), Progress(disable=True) as progress:
        for tile in (1000, 40):
            path, _, _ = predict_geotiff(predictor, Job(scene, tmp_path / str(tile)), None, tile, progress)
            with rasterio.open(path) as src:
                maps[tile] = src.read(1)
        image, _ = EvalTransform(tuple(spec.mean), tuple(spec.std))(data.transpose(1, 2, 0), None)
        logits = sliding_window_logits(predictor.model, image, WINDOW, 21, len(CLASSES), batch_size=8)
    direct = logits.argmax(0).to(torch.uint8).numpy()
    nodata = (data == 0).all(axis=0)
    direct[nodata] = 255
    assert len(np.unique(direct[~nodata])) > 1  # the comparison is not between constant maps
    np.testing.assert_array_equal(maps[1000], direct)
    np.testing.assert_array_equal(maps[40], direct)


def test_single_tile_geotiff_matches_the_png_path(model_dir: Path, tmp_path: Path) -> None:
    """A uint8 RGB GeoTIFF read in one tile sees exactly the pixels and windows of the same PNG."""
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (3, 70, 90), dtype=np.uint8)
    (tmp_path / "in").mkdir()
    write_raster(tmp_path / "in" / "a.tif", rgb)
    Image.fromarray(rgb.transpose(1, 2, 0)).save(tmp_path / "in" / "b.png")
    assert predict(tmp_path / "in" / "a.tif", tmp_path / "in" / "b.png", "-m", model_dir, "-o", tmp_path / "out") == 0
    with rasterio.open(tmp_path / "out" / "a_pred.tif") as src:
        np.testing.assert_array_equal(src.read(1), read_png(tmp_path / "out" / "b_pred.png"))
    for name in ("a_pred.tif", "b_pred.png"):  # readable like any new file, not mkstemp's 0600
        assert (tmp_path / "out" / name).stat().st_mode & 0o777 == 0o644


def test_stretch_excludes_nodata_and_uint8_is_kept(tmp_path: Path) -> None:
    values = np.arange(100 * 100, dtype=np.uint16).reshape(1, 100, 100) + 1000
    values[:, :50] = 0
    with rasterio.open(write_raster(tmp_path / "u16.tif", values, nodata=0)) as src:
        stretch = scene_stretch(src, [1, 1, 1])
    assert stretch is not None
    valid = values[values > 0]
    np.testing.assert_allclose(stretch.low, np.percentile(valid, 2), rtol=0.01)
    np.testing.assert_allclose(stretch.high, np.percentile(valid, 98), rtol=0.01)
    with rasterio.open(write_raster(tmp_path / "u8.tif", np.zeros((3, 8, 8), np.uint8))) as src:
        assert scene_stretch(src, [1, 2, 3]) is None


# ----------------------------------------------------------------------------- plain images


def test_png_jpg_and_folders_with_overlays(model_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    (tmp_path / "images" / "sub").mkdir(parents=True)
    sizes = {"images/wide.png": (45, 70), "images/sub/small.png": (20, 12), "images/photo.jpg": (33, 33)}
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "images" / "notes.txt").write_text("not an image")

    out = tmp_path / "out"
    assert predict(tmp_path / "images", "-m", model_dir, "-o", out, "--overlay", "--overlap", "0.5") == 0

    expected = {"wide": out, "small": out / "sub", "photo": out}
    for (stem, folder), (h, w) in zip(expected.items(), sizes.values(), strict=True):
        classes = read_png(folder / f"{stem}_pred.png")
        assert classes.shape == (h, w) and (classes < len(CLASSES)).all()
        with Image.open(folder / f"{stem}_overlay.png") as im:
            assert im.mode == "RGB" and im.size == (w, h)


def test_no_merge_gives_the_same_classes(model_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    assert predict(tmp_path / "x.png", "-m", model_dir, "-o", tmp_path / "merged") == 0
    assert predict(tmp_path / "x.png", "-m", model_dir / "trainable.safetensors", "-o", tmp_path / "plain",
                   "--no-merge") == 0
    merged, plain = read_png(tmp_path / "merged" / "x_pred.png"), read_png(tmp_path / "plain" / "x_pred.png")
    assert (merged == plain).mean() > 0.999  # float rounding may only flip exact ties


# ----------------------------------------------------------------------------- user errors


@pytest.mark.parametrize(("extra", "message"), [
    (["--bands", "1,2"], "--bands '1,2': expected three comma-separated 1-based band numbers"),
    (["--bands", "5,5,5"], "--bands asks for band 5 but the file has 1 band(s)"),
    ([], "has 1 band(s), not RGB; pass --bands 1,1,1"),
    (["--bands", "1,1,1", "--window", "40"], "--window 40 must be a positive multiple of the backbone patch size 16"),
    (["--bands", "1,1,1", "--overlap", "1"], "--overlap 1.0 must be in [0, 1)"),
])
def test_bad_arguments_are_one_line_user_errors(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    scene = write_raster(tmp_path / "grey.tif", np.ones((1, 8, 8), np.uint16))
    assert predict(scene, "-m", model_dir, "-o", tmp_path / "out", *extra) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("crossearth-gate: error:")]
    assert len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("target", "message"), [
    ("model", "model file not found"),
    ("input", "input not found"),
])
def test_missing_files_are_one_line_user_errors(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str, message: str
) -> None:
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    model = tmp_path / "nowhere.safetensors" if target == "model" else model_dir
    image = tmp_path / "missing.png" if target == "input" else tmp_path / "x.png"
    assert predict(image, "-m", model, "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].startswith("crossearth-gate: error:") and message in err.splitlines()[-1]
    assert str(model if target == "model" else image) in err
