"""Own imagery: datasets from YAML, rasters read window by window, statistics, nodata, regions, /vsicurl/."""

from __future__ import annotations

import csv
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from PIL import Image

from crossearth_gate.cli import main
from crossearth_gate.config.schema import build_dataclass
from crossearth_gate.data import DomainSpec, SegDataModule, get_dataset_info, list_pairs, read_mask
from crossearth_gate.data.catalog import PRESETS, RegionSpec
from crossearth_gate.data.definition import DatasetDef
from crossearth_gate.data.radiometry import band_statistics
from crossearth_gate.data.raster import Region, grid_of, region_of
from crossearth_gate.data.scenes import open_scene
from crossearth_gate.heads.losses import cross_entropy
from crossearth_gate.training.metrics import SegMetrics
from crossearth_gate.util.errors import UserError
from support.paths import DEMO
from support.rasters import TRANSFORM, buildings, scene_pair, write_config, write_raster
from support.tiny import tiny_run

# ----------------------------------------------------------------------------- definitions


def test_presets_are_definitions_of_the_same_form() -> None:
    """Every named dataset is a DatasetDef that a YAML mapping could give, read by the same resolver."""
    from crossearth_gate.config.schema import config_to_dict

    for name, preset in PRESETS.items():
        assert isinstance(preset, DatasetDef)
        rebuilt = build_dataclass(DatasetDef, yaml.safe_load(yaml.safe_dump(config_to_dict(preset))), name)
        assert rebuilt.resolve() == get_dataset_info(name)
    vaihingen = get_dataset_info("vaihingen")
    assert vaihingen.reduce_zero_label and vaihingen.ignored == (0,)


def test_value_map_and_ignore(tmp_path: Path) -> None:
    info = build_dataclass(DatasetDef, buildings(labels={"values": {0: "background", 255: "building"},
                                                          "ignore": [7]}), "d").resolve()
    raw = np.array([[0, 255, 7]], np.uint8)
    from crossearth_gate.data.datasets import decode_label

    np.testing.assert_array_equal(decode_label(raw, "x", info), [[0, 1, 255]])
    with pytest.raises(UserError, match=r"label values 3 out of range for 'buildings' \(allowed 0, 255, 7 = ign"):
        decode_label(np.array([[3]]), "x", info)


@pytest.mark.parametrize(("change", "message"), [
    ({"classes": ["a", "a"]}, "duplicate class name"),
    ({"labels": {"values": {0: "background", 1: "roof"}}}, "unknown class 'roof'"),
    ({"palette": [[0, 0, 0]]}, "palette"),
    ({"bands": [0, 1, 1]}, "bands"),
])
def test_bad_definitions(change: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        build_dataclass(DatasetDef, buildings(**change), "d").resolve()


# ----------------------------------------------------------------------------- GeoTIFF = JPEG, bit for bit


def _as_geotiffs(root: Path, tiles: dict[int, int]) -> Path:
    """Demo tiles as GeoTIFFs: the decoded JPEG pixels, and the colour masks as class-index rasters."""
    info = get_dataset_info("dubai")
    for tile, count in tiles.items():
        images = sorted((DEMO / f"tile_{tile}" / "images").glob("*.jpg"))[:count]
        for image in images:
            rgb = np.array(Image.open(image).convert("RGB"))
            label = read_mask(DEMO / f"tile_{tile}" / "masks" / f"{image.stem}.png", info)
            write_raster(root / f"tile_{tile}" / "images" / f"{image.stem}.tif", rgb.transpose(2, 0, 1))
            write_raster(root / f"tile_{tile}" / "masks" / f"{image.stem}.tif", label[None])
    return root


def _dubai_copy(root: Path, tiles: dict[int, int]) -> Path:
    import shutil

    for tile, count in tiles.items():
        for image in sorted((DEMO / f"tile_{tile}" / "images").glob("*.jpg"))[:count]:
            for kind, suffix in (("images", ".jpg"), ("masks", ".png")):
                target = root / f"tile_{tile}" / kind / f"{image.stem}{suffix}"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(DEMO / f"tile_{tile}" / kind / f"{image.stem}{suffix}", target)
    return root


def _losses(run: Path) -> list[str]:
    with (run / "logs" / "metrics.csv").open() as f:
        return [row["train/loss"] for row in csv.DictReader(f) if row.get("train/loss")]


def test_geotiff_index_rasters_train_bit_identically_to_jpeg(tmp_path: Path) -> None:
    tiles = {1: 4, 5: 2}
    jpeg, tiff = _dubai_copy(tmp_path / "jpeg", tiles), _as_geotiffs(tmp_path / "tiff", tiles)
    dubai = PRESETS["dubai"]
    definition = {"name": "dubai_tif", "classes": list(dubai.classes), "palette": dubai.palette,
                  "images": "tile_{split}/images/*.tif", "labels": {"pattern": "tile_{split}/masks/{stem}.tif"}}
    configs = {
        "jpeg": write_config(tmp_path / "jpeg.yaml", {"dataset": "dubai", "root": str(jpeg), "tiles": [1]},
                             {"t5": {"dataset": "dubai", "root": str(jpeg), "tiles": [5]}}),
        "tiff": write_config(tmp_path / "tiff.yaml", {"dataset": definition, "root": str(tiff), "split": "1"},
                             {"t5": {"dataset": definition, "root": str(tiff), "split": "5"}}),
    }
    extra = ["train.max_steps=3", "train.log_every=1", "data.crop_size=56", "eval.window=56", "eval.stride=42",
             "train.val_every=3"]
    for name, config in configs.items():
        assert main(["fit", "--config", str(config), "--out", str(tmp_path / name), *tiny_run("raster"), *extra]) == 0
    metrics = {name: json.loads((tmp_path / name / "metrics.json").read_text()) for name in configs}
    assert metrics["jpeg"]["domains"] == metrics["tiff"]["domains"]
    assert _losses(tmp_path / "jpeg") == _losses(tmp_path / "tiff") and _losses(tmp_path / "jpeg")
    record = yaml.safe_load((tmp_path / "tiff" / "data.yaml").read_text())
    assert record["domains"]["source"]["definition"]["images"] == "tile_{split}/images/*.tif"
    assert record["radiometry"]["mode"] == "imagenet"


# ----------------------------------------------------------------------------- statistics, nodata


def _four_band(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    rng = np.random.default_rng(3)
    data = rng.integers(1, 3000, (4, 40, 50)).astype(np.uint16)
    data[:, :10, :7] = 0  # nodata corner
    data[2, 20:, :] = 0  # band 3 alone at 0: still valid pixels (some used band holds a value)
    label = (rng.random((40, 50)) < 0.3).astype(np.uint8)
    image = write_raster(tmp_path / "images" / "a.tif", data, nodata=0)
    mask = write_raster(tmp_path / "labels" / "a.tif", label[None])
    return image, mask, data


def test_statistics_match_brute_force_and_skip_nodata(tmp_path: Path) -> None:
    image, _, data = _four_band(tmp_path)
    bands = [4, 2, 1]
    picked = data[[b - 1 for b in bands]].astype(np.float64)
    valid = (picked != 0).any(axis=0)
    mean, std = band_statistics([(image, Region(0, 0, 40, 50))], bands, None)
    np.testing.assert_allclose(mean, [picked[c][valid].mean() for c in range(3)], rtol=1e-12)
    np.testing.assert_allclose(std, [picked[c][valid].std() for c in range(3)], rtol=1e-9)
    # a configured nodata value overrides the file's: 0 becomes a value, so every pixel counts
    mean_all, _ = band_statistics([(image, Region(0, 0, 40, 50))], bands, -1)
    np.testing.assert_allclose(mean_all, picked.reshape(3, -1).mean(axis=1), rtol=1e-12)


def test_nodata_adds_nothing_to_loss_or_confusion(tmp_path: Path) -> None:
    image, mask, data = _four_band(tmp_path)
    definition = build_dataclass(DatasetDef, {"name": "four", "classes": ["a", "b"], "bands": [4, 2, 1]}, "d")
    spec = DomainSpec(definition, str(tmp_path))
    module = SegDataModule(spec, {"t": spec}, val_fraction=0, crop_size=28)
    module.setup("fit")
    assert module.radiometry.mode == "statistics" and module.channels == 3
    sample = module._tests[0][0]
    nodata = ~(data[[3, 1, 0]] != 0).any(axis=0)
    assert nodata.sum() == 70
    assert (sample["mask"][torch.from_numpy(nodata)] == 255).all()
    np.testing.assert_allclose(sample["image"][:, torch.from_numpy(nodata)].numpy(), 0.0, atol=1e-6)
    target = sample["mask"][None]
    logits = torch.randn(1, 2, 40, 50)
    changed = logits.clone()
    changed[..., torch.from_numpy(nodata)] = 100.0 * torch.randn(2, int(nodata.sum()))
    assert cross_entropy(logits, target) == cross_entropy(changed, target)
    metrics = SegMetrics(2, ["a", "b"])
    metrics.update(logits.argmax(1), target)
    assert int(metrics.confmat.sum()) == 40 * 50 - 70


def test_crops_redraw_mostly_nodata(tmp_path: Path) -> None:
    """A scene 60 % nodata: training crops are drawn again until at least min_valid of them holds data."""
    data = np.zeros((1, 100, 100), np.uint16)
    data[0, :, 60:] = np.arange(1000)[:100, None] + 1
    image = write_raster(tmp_path / "images" / "a.tif", data, nodata=0)
    write_raster(tmp_path / "labels" / "a.tif", np.ones((1, 100, 100), np.uint8))
    shares = {}
    for min_valid in (0.0, 0.3):
        definition = build_dataclass(DatasetDef, {"name": "sparse", "classes": ["a", "b"], "min_valid": min_valid},
                                     "d")
        module = SegDataModule(DomainSpec(definition, str(tmp_path)), {}, val_fraction=0, crop_size=14,
                               scale_range=(1.0, 1.0))
        module.setup("fit")
        torch.manual_seed(0)
        shares[min_valid] = [float((module._train[0]["mask"] != 255).float().mean()) for _ in range(30)]
    assert min(shares[0.3]) >= 0.3, shares
    assert sum(share < 0.3 for share in shares[0.0]) > 10, "without redraws most crops miss the data"
    assert image.is_file()


# ----------------------------------------------------------------------------- regions, grids


def test_regions_are_disjoint_and_bounds_match_pixels(tmp_path: Path) -> None:
    image, label = scene_pair(tmp_path, "scene", 0, size=64)
    grid = grid_of(image)
    left, top = TRANSFORM.c, TRANSFORM.f
    by_bounds = region_of(None, [left + 0.5 * 10, top - 0.5 * 40, left + 0.5 * 50, top - 0.5 * 8], grid, image)
    assert by_bounds == Region(8, 10, 32, 40)
    definition = build_dataclass(DatasetDef, buildings(), "d")
    top_half = DomainSpec(definition, str(tmp_path), region=RegionSpec(pixels=[0, 0, 64, 32]))
    bottom = DomainSpec(definition, str(tmp_path), region=RegionSpec(pixels=[0, 32, 64, 32]))
    module = SegDataModule(top_half, {"bottom": bottom}, val_fraction=0, crop_size=28)
    module.setup("fit")
    train_scene = module._train.scenes[0]
    test_scene = module._tests[0].scenes[0]
    assert train_scene.region == Region(0, 0, 32, 64) and test_scene.region == Region(32, 0, 32, 64)
    assert module._tests[0][0]["mask"].shape == (32, 64)
    overlapping = DomainSpec(definition, str(tmp_path), region=RegionSpec(pixels=[0, 20, 64, 30]))
    with pytest.raises(UserError, match="overlap on"):
        SegDataModule(top_half, {"o": overlapping}, val_fraction=0, crop_size=28).setup("fit")


def test_label_off_grid_names_both_files(tmp_path: Path) -> None:
    image, _ = scene_pair(tmp_path, "a", 0)
    info = build_dataclass(DatasetDef, buildings(), "d").resolve()
    shifted = write_raster(tmp_path / "shifted.tif", np.zeros((1, 64, 64), np.uint8),
                           transform=TRANSFORM * TRANSFORM.translation(1, 0))
    with pytest.raises(UserError, match=f"label {shifted} is off the grid of its image {image}"):
        open_scene(image, shifted, info, None, None)
    other_crs = write_raster(tmp_path / "crs.tif", np.zeros((1, 64, 64), np.uint8), crs="EPSG:4326")
    with pytest.raises(UserError, match="is in CRS EPSG:4326"):
        open_scene(image, other_crs, info, None, None)
    small = write_raster(tmp_path / "small.tif", np.zeros((1, 64, 63), np.uint8), georeferenced=False)
    with pytest.raises(UserError, match="is 63x64 but its image"):
        open_scene(image, small, info, None, None)


# ----------------------------------------------------------------------------- window reads, /vsicurl/


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with HTTP Range support and counts the bytes it sent."""

    sent: list[int] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        header = self.headers.get("Range")
        if header is None:
            start, end, status = 0, len(data) - 1, 200
        else:
            first, _, last = header.removeprefix("bytes=").partition("-")
            start, end, status = int(first), min(int(last or len(data) - 1), len(data) - 1), 206
        body = data[start: end + 1]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        self.wfile.write(body)
        self.sent.append(len(body))

    def do_HEAD(self) -> None:  # noqa: N802
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(path.stat().st_size))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[str, list[int]]]:
    sent: list[int] = []
    handler = type("Handler", (_RangeHandler,), {"sent": sent})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(tmp_path)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", sent
    httpd.shutdown()
    httpd.server_close()


def test_window_reads_over_vsicurl_fetch_a_small_part(tmp_path: Path, server: tuple[str, list[int]],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3000² tiled, compressed scene of noise over HTTP: a training crop fetches a few tiles, not the scene."""
    monkeypatch.setenv("CPL_VSIL_CURL_CACHE_SIZE", "0")
    rng = np.random.default_rng(0)
    size = 3000
    path = tmp_path / "big.tif"
    profile = {"driver": "GTiff", "count": 3, "height": size, "width": size, "dtype": "uint8", "tiled": True,
               "blockxsize": 256, "blockysize": 256, "compress": "deflate", "crs": "EPSG:32616",
               "transform": TRANSFORM}
    with rasterio.open(path, "w", **profile) as dst:
        for _, window in dst.block_windows(1):
            dst.write(rng.integers(0, 256, (3, window.height, window.width), dtype=np.uint8), window=window)
    label = write_raster(tmp_path / "big_label.tif", np.zeros((1, size, size), np.uint8), compress="deflate",
                         tiled=True, blockxsize=256, blockysize=256)
    url, sent = server
    listing = tmp_path / "list.txt"
    listing.write_text(f"/vsicurl/{url}/big.tif /vsicurl/{url}/{label.name}\n")
    definition = build_dataclass(DatasetDef, {"name": "remote", "classes": ["a", "b"], "image_list": str(listing)},
                                 "d")
    spec = DomainSpec(definition, str(tmp_path))
    (image, mask), = list_pairs(spec)
    assert str(image).startswith("/vsicurl/http:/")
    module = SegDataModule(spec, {}, val_fraction=0, crop_size=224, scale_range=(1.0, 1.0))
    module.setup("fit")
    sent.clear()
    torch.manual_seed(0)
    remote = module._train[0]
    assert 0 < sum(sent) < path.stat().st_size / 20, (sum(sent), path.stat().st_size)
    local_list = tmp_path / "local.txt"
    local_list.write_text(f"big.tif {label.name}\n")
    local = DomainSpec(build_dataclass(DatasetDef, {"name": "l", "classes": ["a", "b"], "image_list": str(local_list)},
                                       "d"), str(tmp_path))
    module = SegDataModule(local, {}, val_fraction=0, crop_size=224, scale_range=(1.0, 1.0))
    module.setup("fit")
    torch.manual_seed(0)
    assert torch.equal(module._train[0]["image"], remote["image"]) and remote["image"].std() > 0.5


# ----------------------------------------------------------------------------- fit, evaluation, predict agree


def test_predict_normalises_as_training_did(tmp_path: Path) -> None:
    """A uint16 scene with nodata: predict (with the model's stored bands and statistics) reproduces the
    test evaluation of the run pixel for pixel, so its confusion matrix gives the run's own metrics."""
    image, label = scene_pair(tmp_path / "data", "scene", 4, size=70)
    with rasterio.open(image, "r+") as dst:
        data = dst.read()
        data[:, :9, :12] = 0
        dst.write(data)
    definition = {"name": "b", "classes": ["background", "building"], "images": "images/*.tif",
                  "labels": {"pattern": "labels/{stem}.tif", "values": {0: "background", 255: "building"}}}
    domain = {"dataset": definition, "root": str(tmp_path / "data")}
    cfg = write_config(tmp_path / "c.yaml", domain, {"whole": domain}, val_fraction=0.0)
    run = tmp_path / "run"
    assert main(["fit", "--config", str(cfg), "--out", str(run), *tiny_run("raster")]) == 0
    spec_radiometry = yaml.safe_load((run / "data.yaml").read_text())["radiometry"]
    assert spec_radiometry["mode"] == "statistics" and spec_radiometry["bands"] == [1, 1, 1]
    assert main(["predict", str(image), "-m", str(run), "-o", str(tmp_path / "out"), "--window", "28",
                 "--overlap", "0", "--no-merge"]) == 0
    with rasterio.open(tmp_path / "out" / "scene_pred.tif") as src:
        pred = src.read(1)
        assert src.crs is not None
    with rasterio.open(label) as src:
        truth = np.where(src.read(1) == 255, 1, 0)
    assert (pred[:9, :12] == 255).all() and (pred[9:, :] != 255).all()
    valid = pred != 255
    metrics = SegMetrics(2, ["background", "building"])
    metrics.update(torch.from_numpy(pred[valid].astype(np.int64)), torch.from_numpy(truth[valid]))
    expected = json.loads((run / "metrics.json").read_text())["domains"]["whole"]["mIoU"]
    assert round(float(metrics.compute()["mIoU"]), 2) == expected
