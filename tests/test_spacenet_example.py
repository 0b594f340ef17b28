"""The SpaceNet building examples run end to end from their YAML on the real scene: fit, test, predict.

A tiny random backbone keeps this to seconds; what is checked is the plumbing the examples promise (the
shipped mask and the polygon layer both become building labels on the scene's grid, the test area is the
disjoint bottom half, and predict writes a map with the scene's CRS and transform), not the accuracy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import rasterio

from support.cli import run_cli
from support.paths import REPO, SHARED_DATA
from support.tiny import tiny_run

SCENE = SHARED_DATA / "spacenet-geotiff" / "sample_geotiff.tif"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not SCENE.is_file(), reason="needs ../shared/data/spacenet-geotiff")]


def _footprints(path: Path) -> Path:
    """Two square 'houses' in the scene's CRS (EPSG:32616, 0.5 m pixels): one in the top half, one in the bottom."""
    with rasterio.open(SCENE) as src:
        transform = src.transform

    def square(col: int, row: int) -> list[list[float]]:
        corners = [transform * xy for xy in ((col, row), (col + 30, row), (col + 30, row + 30), (col, row + 30))]
        return [[x, y] for x, y in [*corners, corners[0]]]

    features = [{"type": "Feature", "properties": {"building": "yes"},
                 "geometry": {"type": "Polygon", "coordinates": [square(col, row)]}}
                for col, row in ((100, 100), (400, 600))]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features,
                                "crs": {"type": "name", "properties": {"name": "EPSG:32616"}}}))
    return path


@pytest.mark.parametrize("example", ["spacenet_buildings", "spacenet_buildings_polygons"])
def test_example_fits_tests_and_predicts_the_scene(example: str, tmp_path: Path) -> None:
    pytest.importorskip("pyogrio")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CEG_DATA": str(SHARED_DATA), "CEG_CACHE_DIR": str(tmp_path / "cache"),
           "SPACENET_FOOTPRINTS": str(_footprints(tmp_path / "footprints.geojson"))}
    run = tmp_path / "run"
    fit = run_cli("fit", "--config", f"configs/examples/{example}.yaml", "--out", str(run), *tiny_run("scene"),
                  cwd=REPO, env=env)
    assert fit.returncode == 0, fit.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    test = metrics["domains"]["bottom_half"]
    assert set(test["per_class_iou"]) == {"background", "building"}
    assert test["pixels"] == 900 * 450  # the disjoint bottom half, nodata-free

    predicted = run_cli("predict", str(SCENE), "-m", str(run), "-o", str(tmp_path / "preds"), cwd=REPO, env=env)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    with rasterio.open(SCENE) as scene, rasterio.open(tmp_path / "preds" / "sample_geotiff_pred.tif") as pred:
        assert (pred.crs, pred.transform, pred.shape) == (scene.crs, scene.transform, scene.shape)
        assert set(pred.read(1).ravel().tolist()) <= {0, 1, 255}
