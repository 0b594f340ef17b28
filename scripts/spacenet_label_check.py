"""Does a label raster describe its image? The SpaceNet sample's shipped mask against the scene's footprints.

Why: a model trained on labels of another place can only learn their prior, whatever the recipe. This
script puts numbers and a picture on the question for ../shared/data/spacenet-geotiff: the shipped
``sample_fp_mask.tif`` against a footprint layer of the same scene (burnt onto its grid by the same
polygon-label code that training uses), and what the trivial "everything is a building" map scores.

    python scripts/spacenet_label_check.py --scene $CEG_DATA/spacenet-geotiff/sample_geotiff.tif \
        --mask $CEG_DATA/spacenet-geotiff/sample_fp_mask.tif --footprints geotiff_labels.geojson \
        --figure docs/images/spacenet_labels.png
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image

from crossearth_gate.data.definition import PolygonLabels
from crossearth_gate.data.vector import rasterize_labels


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else float("nan")


def outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it: drawn as the polygon's edge."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def stretch(band: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(band, [1, 99])
    return (np.clip((band.astype(np.float64) - lo) / max(hi - lo, 1e-9), 0, 1) * 255).astype(np.uint8)


def figure(scene: np.ndarray, shipped: np.ndarray, footprints: np.ndarray, path: Path) -> None:
    """Left: the shipped mask's outlines; right: the footprint layer's; both in red on the scene."""
    panels = []
    for mask in (shipped, footprints):
        rgb = np.repeat(stretch(scene)[..., None], 3, axis=2)
        edge = outline(mask)
        edge |= np.roll(edge, 1, 0) | np.roll(edge, 1, 1)  # two pixels wide, visible when scaled down
        rgb[edge] = (255, 0, 0)
        panels.append(rgb)
    gap = np.full((scene.shape[0], 12, 3), 255, np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([panels[0], gap, panels[1]], axis=1)).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scene", type=Path, required=True)
    parser.add_argument("--mask", type=Path, required=True, help="label raster on the scene's grid (255 = building)")
    parser.add_argument("--footprints", type=Path, required=True, help="polygon layer with attribute building=yes")
    parser.add_argument("--split-row", type=int, default=450, help="first row of the test area")
    parser.add_argument("--figure", type=Path)
    args = parser.parse_args()

    with rasterio.open(args.scene) as src:
        scene = src.read(1)
    with rasterio.open(args.mask) as src:
        shipped = src.read(1) == 255
    spec = PolygonLabels(str(args.footprints), "building", values={"yes": "building"}, fill="background")
    with tempfile.TemporaryDirectory() as cache:
        with rasterio.open(rasterize_labels(spec, ["background", "building"], args.scene, cache)) as src:
            footprints = src.read(1) == 1

    test = slice(args.split_row, None)
    print(f"building share: shipped mask {shipped.mean():.3f}, footprints {footprints.mean():.3f}")
    print(f"IoU(shipped mask, footprints), whole scene: {iou(shipped, footprints):.3f}")
    print(f"test rows {args.split_row}-: 'all building' scores building IoU {shipped[test].mean():.3f} "
          f"against the shipped mask, {footprints[test].mean():.3f} against the footprints")
    if args.figure:
        figure(scene, shipped, footprints, args.figure)
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
