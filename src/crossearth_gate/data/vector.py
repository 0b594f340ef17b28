"""Polygon labels: a vector layer with a class attribute, burnt onto an image's pixel grid once and cached.

A mapping team's labels are often building or land-cover polygons, not rasters. The layer is reprojected
into the image's CRS (polygons burnt in the wrong CRS land somewhere else without any error) and rasterised
by the pixel-centre rule, painting classes in a configured order so that e.g. a building drawn over a
parcel wins. The result is a uint8 class-index GeoTIFF on the image's exact grid, so the raster-label path
reads it like any other label raster. It is written once per (layer, settings, grid) and reused.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio import features
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.transform import array_bounds
from rasterio.warp import transform_geom

from crossearth_gate.data.definition import PolygonLabels
from crossearth_gate.util.atomic import atomic_write
from crossearth_gate.util.errors import UserError
from crossearth_gate.util.labels import IGNORE_INDEX

CACHE_VERSION = 1  # bump when the burning rule changes: earlier cached rasters then no longer match
GEO_EXTRA = "polygon labels need the geo extra: pip install 'crossearth-gate[geo]'"
SHAPEFILE_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg")


@dataclass(frozen=True)
class Grid:
    """An image's pixel grid: what a label raster must match exactly."""

    width: int
    height: int
    transform: tuple[float, ...]
    crs: str

    def key(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "transform": list(self.transform), "crs": self.crs}


def rasterize_labels(spec: PolygonLabels, classes: Sequence[str], image_path: str | Path,
                     cache_dir: str | Path) -> Path:
    """The path of a uint8 class-index GeoTIFF of ``spec`` on ``image_path``'s grid (255 = ignore).

    Written atomically into ``cache_dir`` under a name keyed by the layer's content, the settings and the
    grid; an existing file with that key is returned without reading the layer again.
    """
    classes = list(classes)
    paint = _painting_values(spec, classes)
    grid = read_grid(image_path)
    key = cache_key(spec, classes, grid)
    out = Path(cache_dir) / f"{Path(str(image_path)).stem}.{key[:20]}.labels.tif"
    if out.is_file():
        return out
    layer = read_layer(spec)
    unknown = sorted({n for n in layer.names if n not in classes})
    if unknown:
        shown = ", ".join(repr(n) for n in unknown[:5])
        raise UserError(f"{spec.path}: {spec.class_attribute} values {shown} are not among the classes {classes}"
                        + ("" if spec.values is None else " (after the configured values map)"))
    shapes = _in_image_crs(spec, layer, grid, image_path)
    shapes.sort(key=lambda item: paint[item[1]][0])  # stable: within a class, the layer's own order
    fill = IGNORE_INDEX if spec.fill is None else classes.index(spec.fill)
    mask = burn([(geom, paint[name][1]) for geom, name in shapes], grid, fill)
    _write(out, mask, grid, classes, spec)
    return out


def _painting_values(spec: PolygonLabels, classes: list[str]) -> dict[str, tuple[int, int]]:
    """class name → (painting rank, class index); checks ``order``, ``fill`` and ``values`` against the classes."""
    if len(classes) > IGNORE_INDEX:
        raise UserError(f"polygon labels {spec.path}: {len(classes)} classes do not fit a uint8 label raster "
                        f"(at most {IGNORE_INDEX}; {IGNORE_INDEX} is ignore)")
    order = list(spec.order or ())
    named = [*order, *([] if spec.fill is None else [spec.fill]), *(spec.values or {}).values()]
    bad = [n for n in named if n not in classes]
    if bad:
        raise UserError(f"polygon labels {spec.path}: class {bad[0]!r} (in order/fill/values) is not among {classes}")
    if len(set(order)) != len(order):
        raise UserError(f"polygon labels {spec.path}: order lists a class twice: {order}")
    ranked = [c for c in classes if c not in order] + order
    return {name: (ranked.index(name), classes.index(name)) for name in classes}


def read_grid(image_path: str | Path) -> Grid:
    try:
        with rasterio.open(image_path) as src:
            if src.crs is None:
                raise UserError(f"{image_path}: the image has no CRS, so polygons cannot be placed on it")
            return Grid(src.width, src.height, tuple(src.transform)[:6], src.crs.to_wkt())
    except RasterioError as err:
        raise UserError(f"cannot read {image_path}: {' '.join(str(err).split())}") from None


def cache_key(spec: PolygonLabels, classes: list[str], grid: Grid) -> str:
    """sha256 over everything the label raster depends on; any change gives another file name."""
    record = {
        "version": CACHE_VERSION, "layer_content": layer_digest(spec.path), "layer": spec.layer,
        "attribute": spec.class_attribute, "classes": classes, "order": list(spec.order or ()),
        "fill": spec.fill, "values": sorted((spec.values or {}).items()), "grid": grid.key(),
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def layer_digest(path: str) -> str:
    """The content hash of a layer's files (a Shapefile's sidecars too), remembered per (path, mtime, size)."""
    main = Path(path)
    if not main.is_file():
        raise UserError(f"polygon layer not found: {path}")
    parts = [main]
    if main.suffix.lower() == ".shp":
        parts = [p for p in (main.with_suffix(s) for s in SHAPEFILE_PARTS) if p.is_file()]
    digest = hashlib.sha256()
    for part in parts:
        stat = part.stat()
        digest.update(f"{part.suffix}:{_file_digest(str(part.resolve()), stat.st_mtime_ns, stat.st_size)}".encode())
    return digest.hexdigest()


@lru_cache(maxsize=64)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    """Hashed once per process per file version: one layer labels many images."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Layer:
    """Valid polygonal shapely geometries in the layer's CRS, each with its class name."""

    geoms: list[Any]
    names: list[str]
    crs: CRS


def read_layer(spec: PolygonLabels) -> Layer:
    """The layer's polygons and class names (after the ``values`` map), checked and repaired.

    Invalid geometries (self-intersections, bow-ties) are repaired with ``shapely.make_valid``, which keeps
    every lobe of the area, unlike ``buffer(0)``, which can drop one; lines and points that the repair
    produces carry no area and are dropped.
    """
    pyogrio, shapely = _geo_modules()
    try:
        info = pyogrio.read_info(spec.path, layer=spec.layer)
        if spec.class_attribute not in list(info["fields"]):
            raise UserError(f"{spec.path}: no attribute {spec.class_attribute!r} "
                            f"(the layer has {', '.join(map(str, info['fields'])) or 'no attributes'})")
        if not info["crs"]:
            raise UserError(f"{spec.path}: the layer has no CRS, so it cannot be placed on an image")
        meta, _, wkb, fields = pyogrio.raw.read(spec.path, layer=spec.layer, columns=[spec.class_attribute])
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, pyogrio.errors.FieldError,
            OSError, ValueError) as err:
        raise UserError(f"cannot read polygon layer {spec.path}: {' '.join(str(err).split())}") from None
    geoms, names = [], []
    values = None if spec.values is None else {str(k): v for k, v in spec.values.items()}
    for blob, raw in zip(wkb, fields[0], strict=True):
        if blob is None:
            continue
        geom = shapely.from_wkb(blob)
        kind = geom.geom_type
        if kind not in ("Polygon", "MultiPolygon"):
            raise UserError(f"{spec.path}: a {kind} geometry in a polygon label layer (only areas can be labels)")
        if not geom.is_valid:
            geom = _polygonal(shapely.make_valid(geom))
        if geom.is_empty:
            continue
        name = _value_name(raw)
        geoms.append(geom)
        names.append(name if values is None else values.get(name, name))
    return Layer(geoms, names, CRS.from_user_input(meta["crs"]))


def _in_image_crs(spec: PolygonLabels, layer: Layer, grid: Grid,
                  image_path: str | Path) -> list[tuple[dict[str, Any], str]]:
    """GeoJSON geometries in the image's CRS; refuses a layer none of whose polygons touch the image."""
    _, shapely = _geo_modules()
    layer_crs, image_crs = layer.crs, CRS.from_wkt(grid.crs)
    mapped = [shapely.geometry.mapping(g) for g in layer.geoms]
    if mapped and layer_crs != image_crs:
        mapped = transform_geom(layer_crs, image_crs, mapped)
    transform = rasterio.Affine(*grid.transform)
    west, south, east, north = array_bounds(grid.height, grid.width, transform)
    frame = shapely.box(west, south, east, north)
    shapes = [shapely.geometry.shape(g) for g in mapped]
    if not any(frame.intersects(s) for s in shapes):
        raise UserError(f"{spec.path}: no polygon overlaps the image {image_path} (after reprojecting "
                        f"{layer_crs.to_string()} to {image_crs.to_string()})")
    return list(zip(mapped, layer.names, strict=True))


def burn(shapes: list[tuple[dict[str, Any], int]], grid: Grid, fill: int) -> np.ndarray:
    """Pixel-centre rasterisation: a pixel takes the last shape (in list order) that covers its centre."""
    if not shapes:
        return np.full((grid.height, grid.width), fill, dtype=np.uint8)
    return features.rasterize(shapes, out_shape=(grid.height, grid.width), transform=rasterio.Affine(*grid.transform),
                              fill=fill, all_touched=False, dtype="uint8")


def _write(out: Path, mask: np.ndarray, grid: Grid, classes: list[str], spec: PolygonLabels) -> None:
    profile = {"driver": "GTiff", "width": grid.width, "height": grid.height, "count": 1, "dtype": "uint8",
               "crs": CRS.from_wkt(grid.crs), "transform": rasterio.Affine(*grid.transform),
               "compress": "deflate"}
    if grid.width >= 256 and grid.height >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)

    def write(tmp: str) -> None:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(mask, 1)
            dst.update_tags(classes=json.dumps(classes), ignore_index=str(IGNORE_INDEX), source=os.fspath(spec.path),
                            class_attribute=spec.class_attribute)

    atomic_write(out, write)


def _value_name(raw: Any) -> str:
    """A class attribute value as the name it is matched by: 3.0 and 3 both read as '3'."""
    if isinstance(raw, float | np.floating) and float(raw).is_integer():
        return str(int(raw))
    return str(raw)


def _polygonal(geom: Any) -> Any:
    """The areas of a repaired geometry (make_valid may return a collection with lines or points)."""
    _, shapely = _geo_modules()
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    parts = [g for g in getattr(geom, "geoms", []) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.unary_union(parts) if parts else shapely.Polygon()


def _geo_modules() -> tuple[Any, Any]:
    """pyogrio and shapely, which only polygon labels need (the optional ``geo`` extra)."""
    try:
        import pyogrio
        import pyogrio.errors
        import pyogrio.raw
        import shapely
        import shapely.geometry
    except ImportError:
        raise UserError(GEO_EXTRA) from None
    return pyogrio, shapely
