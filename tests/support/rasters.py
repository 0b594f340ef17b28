"""Images on disk for the data and predict tests: GeoTIFF scenes, label rasters, PNGs, and own-data configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import yaml
from PIL import Image
from rasterio.transform import from_origin

TRANSFORM = from_origin(500000, 5200000, 0.5, 0.5)


def write_raster(path: Path, data: np.ndarray, nodata: float | None = None, georeferenced: bool = True,
                 crs: str = "EPSG:32616", transform: Any = TRANSFORM, **extra: Any) -> Path:
    """A (bands, h, w) array as a GeoTIFF; ``georeferenced=False`` writes a plain grid (as SpaceNet masks are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile: dict[str, Any] = {"driver": "GTiff", "count": data.shape[0], "height": data.shape[1],
                               "width": data.shape[2], "dtype": data.dtype, "nodata": nodata, **extra}
    if georeferenced:
        profile |= {"crs": crs, "transform": transform}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def scene_pair(root: Path, stem: str, seed: int, size: int = 64, bands: int = 1, dtype: str = "uint16",
               nodata: float | None = 0) -> tuple[Path, Path]:
    """An image with structure (so training has something to see) and its 0/255 label on the same grid."""
    rng = np.random.default_rng(seed)
    label = np.zeros((size, size), np.uint8)
    label[size // 4: size // 2, size // 4: 3 * size // 4] = 255
    image = rng.integers(100, 400, (bands, size, size)).astype(dtype)
    image[:, label == 255] += np.array(600, dtype=dtype)
    return (write_raster(root / "images" / f"{stem}.tif", image, nodata),
            write_raster(root / "labels" / f"{stem}.tif", label[None], georeferenced=False))


def buildings(**overrides: Any) -> dict[str, Any]:
    """A user's dataset definition: 0/255 building masks beside the images."""
    definition: dict[str, Any] = {
        "name": "buildings", "classes": ["background", "building"], "palette": [[0, 0, 0], [255, 0, 0]],
        "images": "images/*.tif", "labels": {"pattern": "labels/{stem}.tif", "values": {0: "background",
                                                                                          255: "building"}},
    }
    return definition | overrides


def write_config(path: Path, source: dict[str, Any], targets: dict[str, dict[str, Any]],
                 **data: Any) -> Path:
    tree = {"name": "own", "data": {"source": source, "targets": targets, **data},
            "toolbox": {"types": ["spatial"]}}
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def rgb_png(path: Path, size: int = 64, seed: int = 0) -> Path:
    """Seeded random 8-bit RGB pixels as a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path
