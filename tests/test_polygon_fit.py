"""Polygon labels in a dataset definition: a GeoJSON layer burnt onto each image's grid and trained on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from crossearth_gate.cli import main
from crossearth_gate.config.schema import build_dataclass
from crossearth_gate.data import DomainSpec, list_pairs
from crossearth_gate.data.definition import DatasetDef
from support.rasters import TRANSFORM, write_config, write_raster
from support.tiny import tiny_run

pytest.importorskip("pyogrio")

SIZE = 56


def _scene(root: Path, stem: str, seed: int) -> Path:
    image = np.random.default_rng(seed).integers(0, 200, (3, SIZE, SIZE)).astype("uint8")
    return write_raster(root / "images" / f"{stem}.tif", image)


def _layer(root: Path) -> Path:
    """One building square in the scenes' CRS: pixels 10..29 in both axes (0.5 m pixels from TRANSFORM)."""
    x0, y0 = TRANSFORM * (10, 10)
    x1, y1 = TRANSFORM * (30, 30)
    square = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    layer = {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "EPSG:32616"}},
             "features": [{"type": "Feature", "properties": {"kind": "building"},
                           "geometry": {"type": "Polygon", "coordinates": [square]}}]}
    path = root / "buildings.geojson"
    path.write_text(json.dumps(layer))
    return path


def _definition(root: Path) -> dict:
    _layer(root)
    return {"name": "polygons", "classes": ["background", "building"], "images": "images/*.tif",
            "labels": {"polygons": {"path": "buildings.geojson", "class_attribute": "kind", "fill": "background"}}}


def test_polygon_labels_are_listed_as_rasters_on_each_grid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEG_CACHE_DIR", str(tmp_path / "cache"))
    _scene(tmp_path, "a", 0)
    definition = build_dataclass(DatasetDef, _definition(tmp_path), "d")
    [(image, label)] = list_pairs(DomainSpec(definition, str(tmp_path)))
    assert label.parent == tmp_path / "cache" / "labels"
    expected = np.zeros((SIZE, SIZE), np.uint8)
    expected[10:30, 10:30] = 1
    with rasterio.open(label) as src:
        np.testing.assert_array_equal(src.read(1), expected)


def test_fit_trains_on_polygon_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEG_CACHE_DIR", str(tmp_path / "cache"))
    for i in range(3):
        _scene(tmp_path, f"s{i}", i)
    definition = _definition(tmp_path)
    config = write_config(tmp_path / "own.yaml", {"dataset": definition, "root": str(tmp_path)},
                          {"same": {"dataset": definition, "root": str(tmp_path)}}, val_fraction=0.34)
    out = tmp_path / "run"
    assert main(["fit", "--config", str(config), "--out", str(out), *tiny_run("raster")]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["domains"]["same"]["per_class_iou"]) == {"background", "building"}
