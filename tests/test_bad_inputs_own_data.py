"""Bad-input suite, own imagery: every wrong definition, raster or label through the real CLI: exit 2, one
line naming the file or key, and nothing that existed before the command changed (no run folder appears)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from support.bad_inputs import cli
from support.models import saved_tiny_model
from support.rasters import TRANSFORM, buildings, rgb_png, scene_pair, write_config, write_raster
from support.tiny import tiny_run


def _fit(tmp_path: Path, make: Callable[[Path], dict[str, Any]]) -> list[str]:
    """Two labelled scenes (source, target) in ``tmp_path/data``, then ``make`` breaks one thing."""
    data = tmp_path / "data"
    scene_pair(data, "a", 0)
    scene_pair(data, "b", 1)
    definition = make(data)
    config = write_config(tmp_path / "own.yaml", {"dataset": definition, "root": str(data)},
                          {"t": {"dataset": definition, "root": str(data)}}, val_fraction=0.0)
    return ["fit", "--config", config, "--out", tmp_path / "run", *tiny_run("raster")]


def _label_value(data: Path) -> dict[str, Any]:
    write_raster(data / "labels" / "b.tif", np.full((1, 64, 64), 7, np.uint8), georeferenced=False)
    return buildings()


def _mixed_dtypes(data: Path) -> dict[str, Any]:
    write_raster(data / "images" / "b.tif", np.ones((1, 64, 64), np.uint8), nodata=0)
    return buildings()


def _mixed_counts(data: Path) -> dict[str, Any]:
    write_raster(data / "images" / "b.tif", np.ones((3, 64, 64), np.uint16), nodata=0)
    return buildings(bands=[1, 1, 1])


def _shifted_label(data: Path) -> dict[str, Any]:
    write_raster(data / "labels" / "b.tif", np.zeros((1, 64, 64), np.uint8),
                 transform=TRANSFORM * TRANSFORM.translation(0, 2))
    return buildings()


def _other_crs(data: Path) -> dict[str, Any]:
    write_raster(data / "labels" / "b.tif", np.zeros((1, 64, 64), np.uint8), crs="EPSG:32617")
    return buildings()


def _all_nodata(data: Path) -> dict[str, Any]:
    write_raster(data / "images" / "b.tif", np.zeros((1, 64, 64), np.uint16), nodata=0)
    return buildings()


def _constant(data: Path) -> dict[str, Any]:
    for stem in ("a", "b"):
        write_raster(data / "images" / f"{stem}.tif", np.full((1, 64, 64), 300, np.uint16), nodata=0)
    return buildings()


def _stray_label(data: Path) -> dict[str, Any]:
    write_raster(data / "labels" / "c.tif", np.zeros((1, 64, 64), np.uint8))
    return buildings()


def _image_without_label(data: Path) -> dict[str, Any]:
    (data / "labels" / "b.tif").unlink()
    return buildings()


# name -> (break the data or definition, what the one line must name)
CASES: dict[str, tuple[Callable[[Path], dict[str, Any]], str]] = {
    "unknown_class": (lambda d: buildings(labels={"values": {0: "background", 255: "roof"}}), "unknown class 'roof'"),
    "duplicate_class": (lambda d: buildings(classes=["building", "building"]), "duplicate class name(s) building"),
    "label_value_without_class": (_label_value, "label values 7 out of range"),
    "band_beyond_count": (lambda d: buildings(bands=[1, 1, 2]), "band 2 asked for but the file has 1 band(s)"),
    "rgb_beyond_channels": (lambda d: buildings(bands=[1, 1, 1, 1], rgb_bands=[1, 2, 5]),
                            "rgb_bands: three different 1-based positions in `bands` (1..4), got [1, 2, 5]"),
    "mixed_dtypes": (_mixed_dtypes, "images of one dataset differ"),
    "mixed_band_counts": (_mixed_counts, "images of one dataset differ"),
    "label_off_grid": (_shifted_label, "is off the grid of its image"),
    "label_other_crs": (_other_crs, "is in CRS EPSG:32617"),
    "all_nodata": (_all_nodata, "every pixel of bands [1, 1, 1] is nodata"),
    "constant_band": (_constant, "is constant (300)"),
    "stray_label": (_stray_label, "labels/c.tif has no image"),
    "image_without_label": (_image_without_label, "images/b.tif has no label"),
    "polygon_layer_missing": (lambda d: buildings(labels={"polygons": {"path": "b.gpkg", "class_attribute": "kind"}}),
                              "polygon layer not found"),
    "bad_region": (lambda d: buildings(), "not inside the 64x64 scene"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_own_data(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make, needle = CASES[case]
    argv = _fit(tmp_path, make)
    if case == "bad_region":
        argv.append("data.source.region={pixels: [0, 0, 65, 10]}")
    cli(capsys, tmp_path, argv, 2, needle)
    assert not (tmp_path / "run").exists()


def test_missing_labels_warn_switch(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    caplog: pytest.LogCaptureFixture) -> None:
    """`missing_labels: warn` skips a stray label with a warning instead of stopping."""
    from crossearth_gate.config.schema import build_dataclass
    from crossearth_gate.data import DomainSpec, list_pairs
    from crossearth_gate.data.definition import DatasetDef

    data = tmp_path / "data"
    scene_pair(data, "a", 0)
    write_raster(data / "labels" / "zz.tif", np.zeros((1, 64, 64), np.uint8))
    definition = build_dataclass(DatasetDef, buildings(missing_labels="warn"), "d")
    assert [p[0].name for p in list_pairs(DomainSpec(definition, str(data)))] == ["a.tif"]
    assert "labels/zz.tif has no image" in caplog.text


def test_predict_bands_a_jpeg_does_not_have(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    saved_tiny_model(run)
    image = rgb_png(tmp_path / "in" / "a.jpg")
    cli(capsys, tmp_path, ["predict", image, "-m", run, "-o", tmp_path / "out", "--bands", "9,9,9"], 2,
        "--bands asks for band 9 but the file has 3 band(s)", "a.jpg")
    assert not (tmp_path / "out").exists()
