"""Side-by-side cost of training configurations: step time, peak memory, saved activations, selection cost.

Each configuration runs in its own fresh process (so peak RSS on CPU is its own), one after the other in
ONE invocation, and the table reports ratios against the all-modules-on configuration.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write_json
from .errors import UserError

NUM_CLASSES = 6


@dataclass
class BenchSetup:
    backbone: str
    img_size: int
    batch_size: int
    steps: int
    warmup_steps: int
    every: int
    num_samples: int
    threads: int


def upper_slots(slot_names: list[str], depth: int, k: int) -> list[str]:
    """k slots spread over the top two thirds of the blocks: none in the lowest third (the target case)."""
    low = depth // 3
    candidates = [n for n in slot_names if int(n.split(".")[1]) >= low]
    stride = len(candidates) / k
    return sorted({candidates[int(i * stride)] for i in range(k)}, key=slot_names.index)


def _build(setup: BenchSetup, config: str):
    from .artefacts import build_seeded_backbone
    from .segmentor import Segmentor
    from .toolbox.slots import SLOT_TYPES, ToolboxConfig

    backbone = build_seeded_backbone(setup.backbone, "none", setup.img_size, None, 0)
    types = () if config in ("frozen", "full-finetune") else SLOT_TYPES
    model = Segmentor(backbone, NUM_CLASSES, ToolboxConfig(types=types), finetune_backbone=config == "full-finetune")
    return model


def _activate(model: Any, config: str, k: int) -> list[str]:
    toolbox = model.toolbox
    if config.startswith("gated"):
        toolbox.set_active(upper_slots(toolbox.slot_names, toolbox.depth, k))
    return toolbox.active_slots()


def _saved_bytes(model: Any, images: torch.Tensor, targets: torch.Tensor) -> int:
    """Bytes of tensors autograd keeps for backward: the activation memory that early stopping saves."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = torch.nn.functional.cross_entropy(model(images), targets)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return total


def _measure(setup: BenchSetup, config: str, queue: Any) -> None:
    torch.set_num_threads(setup.threads)
    torch.manual_seed(0)
    model = _build(setup, config)
    depth = model.toolbox.depth
    k = max(1, round(0.25 * 3 * depth))
    active = _activate(model, config, k)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    images = torch.randn(setup.batch_size, 3, setup.img_size, setup.img_size)
    targets = torch.randint(0, NUM_CLASSES, (setup.batch_size, setup.img_size, setup.img_size))
    model.train()
    saved = _saved_bytes(model, images, targets)
    times = []
    for step in range(setup.warmup_steps + setup.steps):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(images), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= setup.warmup_steps:
            times.append(time.perf_counter() - start)
    result = {
        "config": config,
        "active_slots": len(active),
        "lowest_active_layer": model.toolbox.lowest_active_layer() if active else None,
        "trainable_params": sum(p.numel() for p in params),
        "step_s": statistics.median(times),
        "saved_activation_mb": saved / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if config == "gated":
        result["selection_s"] = {m: _selection_time(model, setup, k, m) for m in ("loop", "vmap")}
    queue.put(result)


def _selection_time(model: Any, setup: BenchSetup, k: int, method: str) -> float:
    """One Fisher re-selection over M single-image samples, as the gate callback runs it."""
    from .gating import FisherSelector
    from .training.losses import per_sample_cross_entropy

    images = torch.randn(setup.num_samples, 3, setup.img_size, setup.img_size)
    targets = torch.randint(0, NUM_CLASSES, (setup.num_samples, setup.img_size, setup.img_size))
    active = model.toolbox.active_slots()
    start = time.perf_counter()
    FisherSelector(method).select(model, model.toolbox, [(images, targets)], per_sample_cross_entropy,
                            setup.num_samples, k, 0)
    elapsed = time.perf_counter() - start
    model.toolbox.set_active(active)
    return elapsed


CONFIGS = ("all-on", "gated", "full-finetune", "frozen")


def run_benchmark(setup: BenchSetup) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    rows = []
    for config in CONFIGS:
        queue = ctx.Queue()
        proc = ctx.Process(target=_measure, args=(setup, config, queue))
        proc.start()
        row = queue.get()
        proc.join()
        rows.append(row)
    base = next(r for r in rows if r["config"] == "all-on")
    for row in rows:
        row["step_vs_all_on"] = row["step_s"] / base["step_s"]
        row["activations_vs_all_on"] = row["saved_activation_mb"] / base["saved_activation_mb"]
    gated = next(r for r in rows if r["config"] == "gated")
    training = setup.every * gated["step_s"]
    selection = {
        method: {"seconds": seconds, "overhead_fraction": seconds / (training + seconds)}
        for method, seconds in gated.pop("selection_s").items()
    }
    return {
        "setup": asdict(setup),
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__},
        "rows": rows,
        "selection": {"every": setup.every, "num_samples": setup.num_samples, "methods": selection},
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [
        "| config | active slots | lowest active | trainable params | step (s) | × all-on | "
        "saved activations (MB) | × all-on | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['config']} | {r['active_slots']} | {r['lowest_active_layer']} | {r['trainable_params']:,} | "
            f"{r['step_s']:.3f} | {r['step_vs_all_on']:.2f} | {r['saved_activation_mb']:.0f} | "
            f"{r['activations_vs_all_on']:.2f} | {r['peak_rss_mb']:.0f} |"
        )
    s = result["selection"]
    lines.append("")
    for method, m in s["methods"].items():
        lines.append(
            f"selection ({method}): {m['seconds']:.2f} s for M={s['num_samples']} samples; overhead at "
            f"N={s['every']}: {100 * m['overhead_fraction']:.2f} % of training time"
        )
    return "\n".join(lines)


def benchmark_cli(args: argparse.Namespace) -> None:
    if args.img_size < 14 or args.batch_size < 1 or args.steps < 1:
        raise UserError("benchmark needs --img-size >= 14, --batch-size >= 1 and --steps >= 1")
    setup = BenchSetup(args.backbone, args.img_size, args.batch_size, args.steps, args.warmup_steps,
                       args.every, args.num_samples, torch.get_num_threads())
    result = run_benchmark(setup)
    result["command"] = "crossearth-gate " + " ".join(sys.argv[1:])
    print(format_table(result))
    if args.out:
        atomic_write_json(Path(args.out), result)
        print(f"saved {args.out}")
