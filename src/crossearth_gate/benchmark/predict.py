"""Inference as users run it: ``predict`` on a large GeoTIFF with PyTorch unmerged, PyTorch merged and
onnxruntime (with and without its graph optimisations), each runner in its own process (its peak RSS),
in megapixels per second; plus the exported graph's parity with PyTorch on the benchmark's real batch.

Why onnxruntime is or is not faster is measured too: the merged model's FLOPs per window (torch's flop
counter) times the windows a scene needs, over each runner's time, against the rate of one large float32
matrix product on the same threads (the machine's attainable rate): a runner near that rate leaves another
runtime nothing to gain at float32.

The scene is a mosaic of the demo images (real imagery, 8-bit RGB) written as a georeferenced GeoTIFF.
The model is the benchmark's, after its all-on steps, with the paper's gate's selected set active.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from PIL import Image
from rasterio.transform import from_origin
from rich.progress import Progress

from ..data.catalog import demo_data_root
from ..export.onnx_graph import export_onnx
from ..export.runtime import OnnxRunner
from ..model.artefacts import ModelSpec, load_trainable, save_trainable
from ..model.inference import iter_tiles
from ..model.merge import merge_for_inference
from ..model.segmentor import Segmentor
from ..predict.geotiff import predict_geotiff
from ..predict.inputs import Job
from ..predict.model import Predictor
from .steps import peak_rss_mb
from .workers import Worker

RUNNERS = ("torch-unmerged", "torch-merged", "onnx", "onnx-unoptimised")
OVERLAP = 1 / 3  # predict's default
TILE = 2048  # predict's default


def demo_scene(path: Path, side: int) -> Path:
    """A side x side RGB GeoTIFF tiled from the demo images, row by row."""
    images = sorted(demo_data_root().glob("tile_*/images/*.jpg"))
    canvas = np.zeros((side, side, 3), dtype=np.uint8)
    top = left = row_height = 0
    for index in range(10**6):
        with Image.open(images[index % len(images)]) as im:
            rgb = np.array(im.convert("RGB"))
        h, w = min(rgb.shape[0], side - top), min(rgb.shape[1], side - left)
        canvas[top : top + h, left : left + w] = rgb[:h, :w]
        left, row_height = left + w, max(row_height, h)
        if left >= side:
            top, left, row_height = top + row_height, 0, 0
        if top >= side:
            break
    profile = {"driver": "GTiff", "count": 3, "height": side, "width": side, "dtype": "uint8",
               "crs": "EPSG:32640", "transform": from_origin(300000, 2800000, 0.3, 0.3)}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(canvas.transpose(2, 0, 1))
    return path


class PredictMeasurer:
    """One runner in its own process: each ``measure()`` predicts the whole scene once."""

    def __init__(self, runner: str, model: Path, graph: Path, scene: Path, out: Path, batch_size: int,
                 threads: int):
        if threads:
            torch.set_num_threads(threads)
        self.scene, self.job = scene, Job(scene, out / runner)
        if runner.startswith("onnx"):
            session = OnnxRunner(graph, threads or None, optimise=runner == "onnx")
            spec, window, forward = session.spec, session.window, session
        else:
            loaded, spec = load_trainable(model)
            forward = merge_for_inference(loaded) if runner == "torch-merged" else loaded.eval()
            window = spec.img_size
        self.predictor = Predictor(forward, spec, window, max(1, round(window * (1 - OVERLAP))), batch_size,
                                   torch.device("cpu"))
        with torch.inference_mode():  # warm-up: one batch of windows (allocations, onnxruntime's first run)
            forward(torch.zeros(batch_size, 3, window, window))

    def measure(self) -> dict[str, Any]:
        start = time.perf_counter()
        with torch.inference_mode(), Progress(disable=True) as progress:
            self.path, _, _ = predict_geotiff(self.predictor, self.job, None, TILE, progress)
        return {"seconds": time.perf_counter() - start}

    def finish(self) -> dict[str, Any]:
        return {"peak_rss_mb": peak_rss_mb(), "prediction": str(self.path)}


@dataclass
class PredictSection:
    """The runners' workers and what the section records beside their throughput."""

    workers: dict[str, Worker]
    parity: dict[str, float]
    scene_side: int
    window_flops: float  # of the merged model, one window
    windows: int  # per scene

    def measure_round(self, order: int) -> dict[str, float]:
        """Every runner once (starting at ``order``, rotating), and this round's throughput ratios."""
        names = list(self.workers)
        names = names[order % len(names):] + names[: order % len(names)]
        peak = matmul_gflops_per_s()
        seconds = {name: self.workers[name].measure()["seconds"] for name in names}
        mpps = {name: self.scene_side**2 / 1e6 / seconds[name] for name in RUNNERS}
        merged = mpps["torch-merged"]
        work = self.windows * self.window_flops / 1e9
        return {
            **{f"{name}_megapixels_per_s": mpps[name] for name in RUNNERS},
            "matmul_gflops_per_s": peak,
            **{f"predict_{name}_share_of_matmul_rate": work / seconds[name] / peak for name in RUNNERS},
            "predict_merged_vs_unmerged_throughput": merged / mpps["torch-unmerged"],
            "predict_onnx_vs_torch_merged_throughput": mpps["onnx"] / merged,
            "predict_onnx_unoptimised_vs_torch_merged_throughput": mpps["onnx-unoptimised"] / merged,
        }

    def finish(self) -> dict[str, Any]:
        records = {name: worker.finish() for name, worker in self.workers.items()}
        maps = {}
        for name, record in records.items():
            with rasterio.open(record.pop("prediction")) as src:
                maps[name] = src.read(1)
        agree = {f"{name}_vs_torch_merged": float((maps[name] == maps["torch-merged"]).mean()) for name in RUNNERS
                 if name != "torch-merged"}
        return {"scene_side": self.scene_side, "windows": self.windows, "window_gflops": self.window_flops / 1e9,
                "runners": records, "class_agreement": agree, "parity": self.parity}

    def kill(self) -> None:
        for worker in self.workers.values():
            worker.kill()


def start_predict(model: Segmentor, spec: ModelSpec, images: torch.Tensor, folder: Path, side: int,
                  batch_size: int, threads: int) -> PredictSection:
    """Save the model (its spec's active set: the gated one), export its graph, write the scene, check parity,
    start one worker per runner."""
    path = save_trainable(folder / "model.safetensors", model, spec)
    graph = folder / "model.onnx"
    export_onnx(path, graph)
    scene = demo_scene(folder / "scene.tif", side)
    parity = graph_parity(path, graph, images)
    workers: dict[str, Worker] = {}
    try:
        for runner in RUNNERS:
            workers[runner] = Worker(PredictMeasurer, runner, path, graph, scene, folder / "out", batch_size, threads)
    except BaseException:
        PredictSection(workers, parity, side, 0, 0).kill()
        raise
    window = spec.img_size
    stride = max(1, round(window * (1 - OVERLAP)))
    windows = sum(len(t.row_starts) * len(t.col_starts) for t in iter_tiles(side, side, TILE, window, stride))
    return PredictSection(workers, parity, side, window_flops(load_trainable(path)[0], window), windows)


@torch.inference_mode()
def window_flops(model: Segmentor, window: int) -> float:
    """FLOPs of one window through the merged model (what every runner must compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        merge_for_inference(model)(torch.zeros(1, 3, window, window))
    return float(counter.get_total_flops())


def matmul_gflops_per_s(side: int = 1024, repeats: int = 5) -> float:
    """The best rate of a side³ float32 matrix product on this process's threads: the attainable rate."""
    a, b = torch.randn(side, side), torch.randn(side, side)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * side**3 / best / 1e9


@torch.inference_mode()
def graph_parity(model: Path, graph: Path, images: torch.Tensor) -> dict[str, float]:
    """The exported graph against the unmerged PyTorch model on the benchmark's real (normalised) batch."""
    loaded, _ = load_trainable(model)
    want = loaded.eval()(images)
    got = OnnxRunner(graph)(images)
    return {"max_abs_logit_diff": float((got - want).abs().max()),
            "class_agreement": float((got.argmax(1) == want.argmax(1)).float().mean()),
            "logit_std": float(want.std())}

