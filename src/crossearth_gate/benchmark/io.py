"""Reading training crops: windows of a large compressed multi-band GeoTIFF versus the JPEG demo tiles.

Two questions, each answered in fresh processes so that neither the page-free heap nor GDAL's block cache
of one measurement flatters another:

1. **Speed**: crops per second (and pixels per second) read as windows from a tiled, deflate-compressed
   4-band uint16 GeoTIFF mosaicked from the real demo imagery (GDAL's default 256² tiles, and 128² tiles:
   a window decodes every tile it touches), against decoding a demo JPEG tile and cutting the crop from it
   (what the JPEG path must do: a JPEG cannot be read by window). Interleaved rounds, so drift hits all
   alike; the median round counts.
2. **Memory**: the peak RSS of reading crops from a 2,000² and a 20,000² scene. A reader that decodes the
   whole scene needs 3.2 GB for the large one; a window reader's peak must not grow with the scene.

Nothing here imports torch: the children measure crop reading, not the deep-learning stack. The reader is
``open_reader`` below; swap it for the data module's own window reader to measure that one.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shlex
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

BANDS = 4
ROUNDS = 5  # timed rounds of the speed measurement (after one untimed)
TILES = (256, 128)  # GDAL's default GeoTIFF tile size (the headline), and tiles smaller than a crop
GDAL_CACHEMAX_MB = 16  # a reading process's block cache: bounded, or it grows with the scene (default: 5 % of RAM)
CropReader = Callable[[str, int, int, int], np.ndarray]


@dataclass
class IOSetup:
    """Everything the I/O benchmark depends on; ``command()`` reproduces it."""

    crop: int = 224  # the demo's training crop
    crops: int = 40  # crops per round and reader
    speed_size: int = 8192  # the compressed multi-band scene the speed is measured on
    small: int = 2000
    large: int = 20000
    seed: int = 0

    def command(self, out: Path | None) -> str:
        flags = [f"--img-size {self.crop}", f"--io-crops {self.crops}",
                 f"--io-sizes {self.speed_size} {self.small} {self.large}"]
        flags += [f"--out {shlex.quote(str(out))}"] if out else []
        return " ".join(["crossearth-gate benchmark --io", *flags])


class WindowReader:
    """One crop = one window read, every band, from a file kept open (as a training worker keeps it)."""

    def __init__(self) -> None:
        self._open: dict[str, Any] = {}

    def __call__(self, path: str, row: int, col: int, size: int) -> np.ndarray:
        import rasterio
        from rasterio.windows import Window

        src = self._open.get(path)
        if src is None:
            src = self._open[path] = rasterio.open(path)
        return src.read(window=Window(col, row, size, size))


def open_reader() -> CropReader:
    """The window reader measured; the data module's own reader can replace this one line."""
    return WindowReader()


def read_jpeg_crop(path: str, row: int, col: int, size: int) -> np.ndarray:
    """The JPEG path: decode the whole tile (a JPEG has no windows), then cut the crop out of it."""
    from PIL import Image

    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    return pixels[row:row + size, col:col + size].copy()


# ---------------------------------------------------------------- the scenes (written by the parent)

def demo_jpegs() -> list[Path]:
    root = Path(__file__).resolve().parents[1] / "demo_data"
    return sorted(root.glob("dubai/*/images/*.jpg"))


def write_mosaic(path: Path, size: int, jpegs: list[Path], tile: int) -> Path:
    """A tiled deflate 4-band uint16 GeoTIFF of real texture: the demo tiles side by side (RGB × 257, and a
    fourth band from red and green), so its compression behaves like imagery, not like a test pattern."""
    from PIL import Image

    cell = 512
    tiles = []
    for jpeg in jpegs:
        with Image.open(jpeg) as im:
            rgb = np.asarray(im.convert("RGB").resize((cell, cell))).astype(np.uint16) * 257
        tiles.append(np.concatenate([rgb.transpose(2, 0, 1), ((rgb[..., :1] + rgb[..., 1:2]) // 2).transpose(2, 0, 1)]))

    def block(row: int, col: int, height: int, width: int) -> np.ndarray:
        index = (row // cell) * (size // cell + 1) + col // cell
        return tiles[index % len(tiles)][:, :height, :width]

    return _write_scene(path, size, block, cell, tile)


def write_smooth(path: Path, size: int) -> Path:
    """A tiled deflate 4-band uint16 scene of a blocky gradient: 20,000² × 4 × 2 bytes (3.2 GB decoded)
    compresses to a few MB, yet every window must still be decoded from its tiles."""

    def block(row: int, col: int, height: int, width: int) -> np.ndarray:
        rows = (np.arange(row, row + height) // 16)[:, None]
        cols = (np.arange(col, col + width) // 16)[None, :]
        return np.stack([((rows * 7 + cols * 3 + b * 1000) % 4096).astype(np.uint16) for b in range(BANDS)])

    return _write_scene(path, size, block, 1024, TILES[0])


def _write_scene(path: Path, size: int, block: Callable[[int, int, int, int], np.ndarray], step: int,
                 tile: int) -> Path:
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = {"driver": "GTiff", "width": size, "height": size, "count": BANDS, "dtype": "uint16",
               "crs": "EPSG:32616", "transform": from_origin(448_000, 4_640_000, 0.5, 0.5), "tiled": True,
               "blockxsize": tile, "blockysize": tile, "compress": "deflate", "predictor": 2, "BIGTIFF": "IF_SAFER"}
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHEMAX_MB), rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, step):
            for col in range(0, size, step):
                height, width = min(step, size - row), min(step, size - col)
                dst.write(block(row, col, height, width), window=Window(col, row, width, height))
    return path


# ---------------------------------------------------------------- the measurements (each in a fresh process)

def positions(rng: np.random.Generator, height: int, width: int, crop: int, n: int) -> list[tuple[int, int]]:
    return [(int(rng.integers(0, height - crop + 1)), int(rng.integers(0, width - crop + 1))) for _ in range(n)]


def measure_speed(scenes: dict[str, str], jpegs: list[str], setup: IOSetup) -> dict[str, float]:
    """Crops per second of the window reader on each scene and of the JPEG path, in interleaved rounds (the
    first, untimed, warms all up), each on the same crop positions."""
    from PIL import Image

    os.environ["GDAL_CACHEMAX"] = str(GDAL_CACHEMAX_MB)
    reader = open_reader()
    rng = np.random.default_rng(setup.seed)
    sizes = []
    for jpeg in jpegs:
        with Image.open(jpeg) as im:
            sizes.append((im.height, im.width))
    usable = [i for i, (h, w) in enumerate(sizes) if min(h, w) >= setup.crop]
    if not usable:
        raise ValueError(f"no demo tile is at least {setup.crop} pixels on both sides")
    rates: dict[str, list[float]] = {name: [] for name in [*scenes, "jpeg"]}
    for round_index in range(ROUNDS + 1):
        geo = positions(rng, setup.speed_size, setup.speed_size, setup.crop, setup.crops)
        picks = [int(rng.choice(usable)) for _ in range(setup.crops)]
        jpg = [(jpegs[i], *positions(rng, *sizes[i], setup.crop, 1)[0]) for i in picks]
        for name, scene in scenes.items():
            start = time.perf_counter()
            for row, col in geo:
                crop = reader(scene, row, col, setup.crop)
            seconds = time.perf_counter() - start
            assert crop.shape == (BANDS, setup.crop, setup.crop), crop.shape
            if round_index:
                rates[name].append(setup.crops / seconds)
        start = time.perf_counter()
        for path, row, col in jpg:
            crop = read_jpeg_crop(path, row, col, setup.crop)
        seconds = time.perf_counter() - start
        assert crop.shape == (setup.crop, setup.crop, 3), crop.shape
        if round_index:
            rates["jpeg"].append(setup.crops / seconds)
    return {name: statistics.median(values) for name, values in rates.items()}


def measure_rss(scene: str, size: int, setup: IOSetup) -> dict[str, float]:
    """Peak RSS of reading crops from one scene, and the RSS before the file is opened (the imports alone)."""
    os.environ["GDAL_CACHEMAX"] = str(GDAL_CACHEMAX_MB)
    reader = open_reader()
    rng = np.random.default_rng(setup.seed)
    before = _status_mb("VmRSS")
    checksum = 0
    for row, col in positions(rng, size, size, setup.crop, setup.crops * ROUNDS):
        checksum += int(reader(scene, row, col, setup.crop)[:, 0, 0].sum())
    return {"rss_before_mb": before, "peak_rss_mb": _status_mb("VmHWM"), "checksum": checksum}


def _status_mb(field: str) -> float:
    """A /proc/self/status memory field of this process (VmHWM: peak since exec, unlike ru_maxrss)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_fresh_process(target: Callable[..., Any], *args: Any) -> Any:
    """``target(*args)`` in a newly spawned interpreter that imports this module only (no torch)."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, target, *args))
    proc.start()
    child.close()
    try:
        status, payload = parent.recv()
    except EOFError:
        proc.join()
        raise RuntimeError(f"benchmark process died with exit code {proc.exitcode}") from None
    proc.join()
    if status != "ok":
        raise RuntimeError(f"benchmark process failed:\n{payload}")
    return payload


def _child(conn: Any, target: Callable[..., Any], *args: Any) -> None:
    try:
        conn.send(("ok", target(*args)))
    except BaseException:
        conn.send(("error", traceback.format_exc()))


# ---------------------------------------------------------------- the section

def run_io_benchmark(setup: IOSetup, folder: Path | None = None) -> dict[str, Any]:
    """Write the scenes in a temporary folder, measure, and summarise (plain ratios)."""
    jpegs = demo_jpegs()
    with tempfile.TemporaryDirectory(prefix="crossearth-io-", dir=folder) as tmp:
        start = time.perf_counter()
        files = {f"geotiff_tile{t}": write_mosaic(Path(tmp) / f"mosaic{t}.tif", setup.speed_size, jpegs, t)
                 for t in TILES}
        files["small"] = write_smooth(Path(tmp) / "small.tif", setup.small)
        files["large"] = write_smooth(Path(tmp) / "large.tif", setup.large)
        write_s = time.perf_counter() - start
        on_disk = {name: path.stat().st_size / 2**20 for name, path in files.items()}
        mosaics = {f"geotiff_tile{t}": str(files[f"geotiff_tile{t}"]) for t in TILES}
        speed = in_fresh_process(measure_speed, mosaics, [str(j) for j in jpegs], setup)
        rss = {name: in_fresh_process(measure_rss, str(files[name]), size, setup)
               for name, size in (("small", setup.small), ("large", setup.large))}
    headline = f"geotiff_tile{TILES[0]}"
    scenes: dict[str, Any] = {
        name: {"size": setup.speed_size, "bands": BANDS, "dtype": "uint16", "tile": int(name.split("tile")[1]),
               "compress": "deflate", "content": "the demo tiles side by side", "mb_on_disk": on_disk[name]}
        for name in mosaics
    }
    for name, size in (("small", setup.small), ("large", setup.large)):
        scenes[name] = {"size": size, "bands": BANDS, "dtype": "uint16", "tile": TILES[0], "compress": "deflate",
                        "mb_decoded": size**2 * BANDS * 2 / 2**20, "mb_on_disk": on_disk[name], **rss[name]}
    ratios = {"geotiff_vs_jpeg_per_pixel": speed[headline] / speed["jpeg"]}  # same crop size: pixels cancel
    ratios |= {f"geotiff_tile{t}_vs_jpeg_per_pixel": speed[f"geotiff_tile{t}"] / speed["jpeg"] for t in TILES[1:]}
    ratios["geotiff_vs_jpeg_per_band_value"] = speed[headline] * BANDS / (speed["jpeg"] * 3)
    ratios["peak_rss_large_vs_small"] = rss["large"]["peak_rss_mb"] / rss["small"]["peak_rss_mb"]
    return {
        "setup": asdict(setup),
        "machine": machine(),
        "gdal_cachemax_mb": GDAL_CACHEMAX_MB,
        "scenes": scenes,
        "write_s": write_s,
        "crops_per_s": speed,
        "mpixels_per_s": {name: rate * setup.crop**2 / 1e6 for name, rate in speed.items()},
        "jpeg_tiles": len(jpegs),
        "ratios": ratios,
        "targets": {"geotiff_vs_jpeg_per_pixel": ">= 1", "peak_rss_large_vs_small": "<= 1.2"},
    }


def machine() -> dict[str, Any]:
    """Where it ran, and the decoders' versions (GDAL's deflate and Pillow's libjpeg set the two speeds)."""
    import platform
    import sys

    import PIL
    import rasterio

    return {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count(),
            "rasterio": rasterio.__version__, "gdal": rasterio.__gdal_version__, "pillow": PIL.__version__}


def format_io(result: dict[str, Any]) -> str:
    scenes, crop = result["scenes"], result["setup"]["crop"]
    lines = [f"crops of {crop}²: {name} {rate:.1f}/s ({result['mpixels_per_s'][name]:.2f} Mpx/s)"
             for name, rate in result["crops_per_s"].items()]
    lines += [f"peak RSS: {scenes['small']['size']}² scene {scenes['small']['peak_rss_mb']:.0f} MB, "
              f"{scenes['large']['size']}² scene {scenes['large']['peak_rss_mb']:.0f} MB "
              f"({scenes['large']['mb_decoded']:.0f} MB decoded)"]
    lines += [f"{name}: {value:.3f} (target {result['targets'].get(name, '-')})"
              for name, value in result["ratios"].items()]
    return "\n".join(lines)


def io_cli(args: argparse.Namespace) -> None:
    """``crossearth-gate benchmark --io``: the crop-reading section on its own, with its reproducing command."""
    from ..util.atomic import atomic_write_json
    from ..util.errors import UserError

    speed, small, large = args.io_sizes
    if args.io_crops < 1 or min(speed, small, large) < args.img_size or args.img_size < 1:
        raise UserError(f"benchmark --io needs --io-crops >= 1 and every --io-sizes value >= --img-size "
                        f"({args.img_size})")
    setup = IOSetup(crop=args.img_size, crops=args.io_crops, speed_size=speed, small=small, large=large)
    result = run_io_benchmark(setup)
    result["command"] = setup.command(args.out)
    print(format_io(result))
    if args.out:
        atomic_write_json(args.out, result)
        print(f"saved {args.out}")
    print(f"reproduce: {result['command']}")
