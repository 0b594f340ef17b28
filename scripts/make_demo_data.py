"""Build the small Dubai demo set shipped in the package: all tiles, downscaled to fit a few megabytes.

Usage: python scripts/make_demo_data.py --src /work/shared/data/dubai-aerial \
           --out src/crossearth_gate/demo_data/dubai --max-side 512
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image

from crossearth_gate.data import DomainSpec, get_dataset_info, list_pairs, read_image, read_mask


def _downscaled_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def convert(src: Path, out: Path, max_side: int) -> None:
    """Copy every pair: images bilinear to JPEG, masks nearest (exact palette colours) to RGB PNG."""
    for image_path, mask_path in list_pairs(DomainSpec("dubai", str(src))):
        assert mask_path is not None
        rel = image_path.relative_to(src)
        with Image.open(image_path) as image, Image.open(mask_path) as mask:
            size = _downscaled_size(image.size, max_side)
            small_image = image.convert("RGB").resize(size, Image.Resampling.BILINEAR)
            small_mask = mask.convert("RGB").resize(size, Image.Resampling.NEAREST)
        (out / rel.parent).mkdir(parents=True, exist_ok=True)
        (out / rel.parent.parent / "masks").mkdir(parents=True, exist_ok=True)
        small_image.save(out / rel, quality=90)
        small_mask.save(out / rel.parent.parent / "masks" / mask_path.name, optimize=True)


def check(out: Path) -> int:
    """Every generated mask must map with no unknown colour and match its image's size."""
    info = get_dataset_info("dubai")
    pairs = list_pairs(DomainSpec("dubai", str(out)))
    for image_path, mask_path in pairs:
        assert mask_path is not None
        assert read_mask(mask_path, info).shape == read_image(image_path).shape[:2], image_path
    return len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, required=True, help="the full dubai-aerial folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder (replaced)")
    parser.add_argument("--max-side", type=int, default=512, help="longest side after downscaling")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    convert(args.src, args.out, args.max_side)
    count = check(args.out)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {count} pairs to {args.out}: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
