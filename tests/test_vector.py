"""Polygon labels: burnt onto an image's grid by the pixel-centre rule, in the configured class order, from a
layer in another CRS, cached once; every bad layer refused with one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform as transform_points

from crossearth_gate.config.schema import build_dataclass
from crossearth_gate.data import vector
from crossearth_gate.data.definition import LabelDef, PolygonLabels
from crossearth_gate.data.vector import GEO_EXTRA, rasterize_labels
from crossearth_gate.util.errors import UserError
from support.paths import SHARED_DATA

pyogrio = pytest.importorskip("pyogrio")
shapely = pytest.importorskip("shapely")

CLASSES = ["background", "building", "road", "water"]
UTM = "EPSG:32616"
X0, Y0, RES = 448_000.0, 4_640_000.0, 2.0  # a 10 x 8 grid of 2 m pixels in UTM zone 16N
WIDTH, HEIGHT = 10, 8

# Polygons in pixel units (column, row), hand-placed so that no pixel centre lies on an edge.
ROAD = [(0, 0), (6.2, 0), (0, 6.2)]  # centres with c + r <= 5
BUILDING = [(2, 1), (5, 1), (5, 4), (2, 4)]  # columns 2..4, rows 1..3: overlaps the road
WATER = [(3.3, 10), (12, 10), (12, 1.3)]  # c + r >= 13; crosses the right and bottom edges

# Expected by hand: r = road, b = building, w = water, . = fill.
ROAD_THEN_BUILDING = """
rrrrrr....
rrbbb.....
rrbbb.....
rrbbb.....
rr.......w
r.......ww
.......www
......wwww
"""
BUILDING_THEN_ROAD = """
rrrrrr....
rrrrr.....
rrrrb.....
rrrbb.....
rr.......w
r.......ww
.......www
......wwww
"""


def expected(picture: str, fill: int) -> np.ndarray:
    codes = {"r": CLASSES.index("road"), "b": CLASSES.index("building"), "w": CLASSES.index("water"), ".": fill}
    return np.array([[codes[ch] for ch in row] for row in picture.split()], dtype=np.uint8)


def to_utm(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(X0 + c * RES, Y0 - r * RES) for c, r in points]


def to_lonlat(points: list[tuple[float, float]]) -> list[list[float]]:
    xs, ys = zip(*to_utm(points), strict=True)
    lons, lats = transform_points(UTM, "EPSG:4326", list(xs), list(ys))
    return [[lon, lat] for lon, lat in zip(lons, lats, strict=True)]


def write_image(path: Path, crs: str | None = UTM) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=WIDTH, height=HEIGHT, count=1, dtype="uint16",
                       crs=crs, transform=from_origin(X0, Y0, RES, RES)) as dst:
        dst.write(np.arange(WIDTH * HEIGHT, dtype=np.uint16).reshape(1, HEIGHT, WIDTH))
    return path


def write_geojson(path: Path, features: list[tuple[list[list[float]], object]], attribute: str = "kind") -> Path:
    """A plain GeoJSON file (longitude/latitude, EPSG:4326 by the format's definition)."""
    items = [{"type": "Feature", "properties": {attribute: value},
              "geometry": {"type": "Polygon", "coordinates": [ring + [ring[0]]]}} for ring, value in features]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    return path


def write_layer(path: Path, polygons: list[list[tuple[float, float]]], values: list[object], crs: str | None,
                driver: str = "GPKG", geometry_type: str = "Polygon") -> Path:
    """A GeoPackage or Shapefile through GDAL, polygons given in layer coordinates."""
    geoms = [shapely.Polygon(p) if geometry_type == "Polygon" else shapely.LineString(p) for p in polygons]
    pyogrio.raw.write(str(path), np.array(shapely.to_wkb(geoms), dtype=object), [np.array(values, dtype=object)],
                      ["kind"], driver=driver, geometry_type=geometry_type, crs=crs)
    return path


@pytest.fixture
def scene(tmp_path: Path) -> tuple[Path, Path]:
    image = write_image(tmp_path / "scene.tif")
    layer = write_geojson(tmp_path / "labels.geojson", [
        (to_lonlat(ROAD), "road"), (to_lonlat(BUILDING), "building"), (to_lonlat(WATER), "water"),
    ])
    return image, layer


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_lonlat_polygons_burn_onto_a_utm_grid_by_pixel_centre_and_order(scene: tuple[Path, Path],
                                                                         tmp_path: Path) -> None:
    image, layer = scene
    spec = PolygonLabels(str(layer), "kind", order=("road", "building"))
    out = rasterize_labels(spec, CLASSES, image, tmp_path / "cache")
    np.testing.assert_array_equal(read(out), expected(ROAD_THEN_BUILDING, 255))
    with rasterio.open(out) as lab, rasterio.open(image) as img:
        assert lab.dtypes[0] == "uint8" and lab.transform == img.transform and lab.crs == img.crs
        assert json.loads(lab.tags()["classes"]) == CLASSES
    # the other order paints the road over the building; a fill class replaces ignore
    spec = PolygonLabels(str(layer), "kind", order=("building", "road"), fill="background")
    out = rasterize_labels(spec, CLASSES, image, tmp_path / "cache")
    np.testing.assert_array_equal(read(out), expected(BUILDING_THEN_ROAD, 0))


def test_the_real_spacenet_grid_against_a_brute_force_pixel_centre_test(tmp_path: Path) -> None:
    """On the real SpaceNet scene's grid (EPSG:32616, 0.5 m), lon/lat polygons land on exactly the pixels whose
    centres the UTM polygons contain, checked point by point with shapely (independent of GDAL's burner)."""
    scene = SHARED_DATA / "spacenet-geotiff" / "sample_geotiff.tif"
    if not scene.is_file():
        pytest.skip(f"{scene} not available")
    with rasterio.open(scene) as src:
        transform, crs, (height, width) = src.transform, src.crs, src.shape
    hexagon = [(300 + 150 * np.cos(a), 420 + 130 * np.sin(a)) for a in np.linspace(0, 2 * np.pi, 7)[:-1] + 0.3]
    quad = [(-80.3, 350.7), (260.2, 300.1), (310.9, 610.4), (-40.6, 700.2)]  # crosses the left edge
    in_utm = {name: shapely.Polygon([transform * p for p in ring]) for name, ring in
              (("building", hexagon), ("road", quad))}

    def lonlat(polygon: shapely.Polygon) -> list[list[float]]:
        xs, ys = polygon.exterior.coords.xy
        lons, lats = transform_points(crs, "EPSG:4326", list(xs), list(ys))
        return [[lon, lat] for lon, lat in zip(lons, lats, strict=True)][:-1]

    layer = write_geojson(tmp_path / "real.geojson", [(lonlat(p), name) for name, p in in_utm.items()])
    out = rasterize_labels(PolygonLabels(str(layer), "kind", order=("building", "road"), fill="background"),
                           CLASSES, scene, tmp_path / "cache")
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    xs, ys = transform * (cols, rows)
    want = np.zeros((height, width), dtype=np.uint8)
    for name in ("building", "road"):  # road painted last: over the building
        want[shapely.contains_xy(in_utm[name], xs, ys)] = CLASSES.index(name)
    got = read(out)
    assert (want == CLASSES.index("road")).sum() > 10_000 and (want == CLASSES.index("building")).sum() > 10_000
    assert ((want == 1) & (got == 2)).sum() == 0
    np.testing.assert_array_equal(got, want)


def test_default_order_is_class_order_and_a_geopackage_in_the_image_crs(tmp_path: Path) -> None:
    """Classes paint in class order by default (road after building); a UTM GeoPackage needs no reprojection."""
    image = write_image(tmp_path / "scene.tif")
    layer = write_layer(tmp_path / "labels.gpkg", [to_utm(ROAD), to_utm(BUILDING), to_utm(WATER)],
                        ["road", "building", "water"], UTM)
    out = rasterize_labels(PolygonLabels(str(layer), "kind"), CLASSES, image, tmp_path / "cache")
    np.testing.assert_array_equal(read(out), expected(BUILDING_THEN_ROAD, 255))


def test_codes_map_to_classes_and_a_bowtie_keeps_both_lobes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A self-intersecting polygon is repaired with make_valid: both of its triangles are labelled."""
    repaired = []
    monkeypatch.setattr(shapely, "make_valid", lambda g, _real=shapely.make_valid: repaired.append(g) or _real(g))
    image = write_image(tmp_path / "scene.tif")
    bowtie = to_utm([(0, 0), (10, 8), (10, 0), (0, 8)])
    layer = write_layer(tmp_path / "codes.shp", [bowtie], [2], UTM, driver="ESRI Shapefile")
    spec = PolygonLabels(str(layer), "kind", values={2: "building"}, fill="background")
    mask = read(rasterize_labels(spec, CLASSES, image, tmp_path / "cache"))
    assert mask[3, 0] == mask[4, 0] == 1 and mask[3, 9] == mask[4, 9] == 1  # left and right lobes
    assert mask[0, 4] == mask[0, 5] == mask[7, 4] == mask[7, 5] == 0  # above and below the crossing
    assert len(repaired) == 1


def test_the_second_call_reads_the_cache(scene: tuple[Path, Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    image, layer = scene
    spec = PolygonLabels(str(layer), "kind")
    first = rasterize_labels(spec, CLASSES, image, tmp_path / "cache")
    stamp = first.stat().st_mtime_ns

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("rasterised again")

    monkeypatch.setattr(vector, "burn", refuse)
    monkeypatch.setattr(vector, "read_layer", refuse)
    assert rasterize_labels(spec, CLASSES, image, tmp_path / "cache") == first
    assert first.stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.name]  # no temporary file left behind
    # another setting (fill), or the same layer with other content, is another cache entry
    with pytest.raises(AssertionError, match="rasterised again"):
        rasterize_labels(PolygonLabels(str(layer), "kind", fill="background"), CLASSES, image, tmp_path / "cache")
    layer.write_text(layer.read_text().replace('"water"', '"road"'))
    with pytest.raises(AssertionError, match="rasterised again"):
        rasterize_labels(spec, CLASSES, image, tmp_path / "cache")


def bad(spec: PolygonLabels, image: Path, cache: Path, match: str) -> None:
    with pytest.raises(UserError, match=match) as err:
        rasterize_labels(spec, CLASSES, image, cache)
    assert "\n" not in str(err.value)
    assert not cache.exists() or not any(cache.iterdir()), "nothing is written for bad input"


def test_bad_layers_get_one_line(scene: tuple[Path, Path], tmp_path: Path) -> None:
    image, layer = scene
    cache = tmp_path / "cache"
    bad(PolygonLabels(str(layer), "class"), image, cache, r"no attribute 'class' \(the layer has kind\)")
    odd = write_geojson(tmp_path / "odd.geojson", [(to_lonlat(ROAD), "road"), (to_lonlat(WATER), "lake")])
    bad(PolygonLabels(str(odd), "kind"), image, cache, r"kind values 'lake' are not among the classes")
    no_crs = write_layer(tmp_path / "nocrs.gpkg", [to_utm(ROAD)], ["road"], None)
    bad(PolygonLabels(str(no_crs), "kind"), image, cache, "the layer has no CRS")
    far = write_layer(tmp_path / "far.gpkg", [[(x + 50_000, y) for x, y in to_utm(ROAD)]], ["road"], UTM)
    bad(PolygonLabels(str(far), "kind"), image, cache, "no polygon overlaps the image")
    lines = write_layer(tmp_path / "lines.gpkg", [to_utm(ROAD)], ["road"], UTM, geometry_type="LineString")
    bad(PolygonLabels(str(lines), "kind"), image, cache, "a LineString geometry in a polygon label layer")
    bad(PolygonLabels(str(tmp_path / "missing.gpkg"), "kind"), image, cache, "polygon layer not found")
    corrupt = tmp_path / "corrupt.gpkg"
    corrupt.write_bytes(b"SQLite format 3\0" + bytes(200))
    bad(PolygonLabels(str(corrupt), "kind"), image, cache, "cannot read polygon layer .*corrupt.gpkg")
    bad(PolygonLabels(str(layer), "kind", order=("road", "lake")), image, cache, "class 'lake' .* is not among")
    bad(PolygonLabels(str(layer), "kind", fill="sea"), image, cache, "class 'sea' .* is not among")
    bad(PolygonLabels(str(layer), "kind", order=("road", "road")), image, cache, "order lists a class twice")
    bad(PolygonLabels(str(layer), "kind"), write_image(tmp_path / "plain.tif", crs=None), cache, "image has no CRS")
    with pytest.raises(UserError, match="256 classes do not fit a uint8 label raster"):
        rasterize_labels(PolygonLabels(str(layer), "kind"), [f"c{i}" for i in range(256)], image, cache)


def test_without_the_geo_extra_one_line_names_it(scene: tuple[Path, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    image, layer = scene
    monkeypatch.setitem(sys.modules, "pyogrio", None)  # import pyogrio now raises ImportError
    with pytest.raises(UserError) as err:
        rasterize_labels(PolygonLabels(str(layer), "kind"), CLASSES, image, tmp_path / "cache")
    assert str(err.value) == GEO_EXTRA


def test_the_yaml_form() -> None:
    """A dataset definition's ``labels.polygons`` mapping becomes the spec that rasterize_labels takes."""
    labels = build_dataclass(LabelDef, {"polygons": {"path": "b.gpkg", "class_attribute": "kind", "order": [
        "road", "building"], "fill": "background", "values": {1: "building"}}}, "labels")
    assert labels.polygons == PolygonLabels("b.gpkg", "kind", None, ("road", "building"), "background",
                                            {"1": "building"})
    for raw, match in (({"path": "b.gpkg"}, "class_attribute must be a non-empty string"),
                       ({"path": "b.gpkg", "class_attribute": "kind", "colour": 1},
                        r"unknown config key labels.polygons.colour \(known: class_attribute, fill"),
                       ({"path": "b.gpkg", "class_attribute": "kind", "order": "road"}, "order: expected a list"),
                       ("b.gpkg", "polygons: expected a mapping")):
        with pytest.raises(UserError, match=match):
            build_dataclass(LabelDef, {"polygons": raw}, "labels")


def test_the_python_form_is_checked_as_the_yaml_form() -> None:
    assert PolygonLabels("b.gpkg", "kind", order=["road"], values={1: "road"}) == PolygonLabels(
        "b.gpkg", "kind", order=("road",), values={"1": "road"})
    for kwargs, match in (({"path": "", "class_attribute": "kind"}, "path must be a non-empty string"),
                          ({"path": "b.gpkg", "class_attribute": "kind", "order": "road"}, "order: expected a list"),
                          ({"path": "b.gpkg", "class_attribute": "kind", "values": {1: 2}},
                           "values: expected a mapping"),
                          ({"path": "b.gpkg", "class_attribute": "kind", "fill": 0}, "fill: expected a string"),
                          ({"path": "b.gpkg", "class_attribute": "kind", "layer": 1}, "layer: expected a string")):
        with pytest.raises(UserError, match=match):
            PolygonLabels(**kwargs)
