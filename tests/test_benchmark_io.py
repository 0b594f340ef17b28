"""The crop-reading section of the benchmark (``benchmark --io``) on tiny scenes: every number is written,
the window reader returns exactly the pixels of a whole-scene read, and the scenes are what they claim."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from crossearth_gate.benchmark import io
from crossearth_gate.cli import main


def test_the_io_section_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "io.json"
    assert main(["benchmark", "--io", "--img-size", "32", "--io-crops", "2", "--io-sizes", "256", "128", "512",
                 "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data["crops_per_s"]) == {"geotiff_tile256", "geotiff_tile128", "jpeg"}
    assert all(rate > 0 for rate in data["crops_per_s"].values())
    assert data["mpixels_per_s"]["jpeg"] == pytest.approx(data["crops_per_s"]["jpeg"] * 32**2 / 1e6)
    ratios = data["ratios"]
    assert ratios["geotiff_vs_jpeg_per_pixel"] == pytest.approx(
        data["crops_per_s"]["geotiff_tile256"] / data["crops_per_s"]["jpeg"])
    small, large = data["scenes"]["small"], data["scenes"]["large"]
    assert ratios["peak_rss_large_vs_small"] == pytest.approx(large["peak_rss_mb"] / small["peak_rss_mb"])
    assert small["size"] == 128 and large["size"] == 512 and large["mb_decoded"] == 512**2 * 4 * 2 / 2**20
    assert 0 < small["rss_before_mb"] <= small["peak_rss_mb"]
    assert data["command"] == (f"crossearth-gate benchmark --io --img-size 32 --io-crops 2 --io-sizes 256 128 512 "
                               f"--out {out}")
    assert data["jpeg_tiles"] == len(io.demo_jpegs()) > 0
    assert data["machine"]["gdal"] and data["gdal_cachemax_mb"] == io.GDAL_CACHEMAX_MB


def test_the_window_reader_reads_exactly_the_window(tmp_path: Path) -> None:
    scene = io.write_smooth(tmp_path / "smooth.tif", 300)
    with rasterio.open(scene) as src:
        assert src.profile["tiled"] and src.profile["compress"] == "deflate" and src.count == io.BANDS
        whole = src.read()
    rows, cols = np.arange(300)[:, None] // 16, np.arange(300)[None, :] // 16
    np.testing.assert_array_equal(whole[2], (rows * 7 + cols * 3 + 2000) % 4096)  # the pattern, in closed form
    reader = io.open_reader()
    for row, col in ((0, 0), (45, 260), (268, 3)):
        np.testing.assert_array_equal(reader(str(scene), row, col, 32), whole[:, row:row + 32, col:col + 32])


def test_the_mosaic_holds_the_demo_pixels(tmp_path: Path) -> None:
    from PIL import Image

    jpegs = io.demo_jpegs()[:2]
    mosaic = io.write_mosaic(tmp_path / "mosaic.tif", 600, jpegs, 128)
    with Image.open(jpegs[0]) as im:
        first = np.asarray(im.convert("RGB").resize((512, 512))).astype(np.uint16)
    with rasterio.open(mosaic) as src:
        assert src.block_shapes[0] == (128, 128)
        np.testing.assert_array_equal(src.read([1, 2, 3], window=((0, 512), (0, 512))), first.transpose(2, 0, 1) * 257)
