"""Side-by-side cost of the training configurations on real selections: is gated training really cheaper?

One invocation, on real crops of the demo images and the given backbone weights:

1. **Selection** (this process): train a few steps with every slot on, run the paper's Fisher selection
   on M demo images (timed, per-sample loop and vmap), calibrate the cost model and run the
   compute-aware selection at the given budget on the same scores, and time inference of the merged
   models (LoRA folded in, inactive slots dropped) against the bare backbone + head.
2. **Steps**: each configuration — all-on, the paper's gate with the set it selected, the compute-aware
   gate with its set, LoRA only, full fine-tuning, frozen — in a fresh process (so its peak RSS is its
   own) on the same real batch: median step time, bytes autograd saves, peak RSS.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import queue
import resource
import shlex
import sys
import traceback
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..gating import Budget
from ..util.atomic import atomic_write_json, atomic_write_text
from ..util.errors import UserError

CONFIGS = ("all-on", "gated", "compute-aware", "lora", "full-finetune", "frozen")
GATE_K = 0.25  # the demo's and the paper's k: a quarter of the slots
OVERHEAD_N = 100  # re-selection interval of the headline selection-overhead ratio (the paper's DG setting)


@dataclass
class BenchSetup:
    """Everything a run depends on; ``command()`` reproduces it."""

    weights: str = "auto"
    backbone: str = "vit_small_patch14_dinov2"
    img_size: int = 224
    batch_size: int = 4
    steps: int = 5
    warmup_steps: int = 2
    select_after: int = 5
    every: int = OVERHEAD_N
    num_samples: int = 8
    step_fraction: float = 0.6
    threads: int = 0  # 0: torch's default

    def command(self, out: Path | None, profile: Path | None) -> str:
        flags = [f"--{f.name.replace('_', '-')} {shlex.quote(str(getattr(self, f.name)))}"
                 for f in fields(self) if f.name != "threads"]
        flags += [f"--out {shlex.quote(str(out))}"] if out else []
        flags += [f"--profile {shlex.quote(str(profile))}"] if profile else []
        return "crossearth-gate benchmark " + " ".join(flags)


def select_sets(setup: BenchSetup) -> dict[str, Any]:
    """Phase 1: the real Fisher selection, the compute-aware one on the same scores, and merged inference."""
    from ..gating import FisherSelector, budgeted_top_k, calibrate, resolve_k
    from ..gating.budget import budget_record
    from ..heads.losses import per_sample_cross_entropy
    from ..model.merge import merge_for_inference
    from ..toolbox.slots import activated
    from ..training.run import build_datamodule
    from .measure import bench_config, build_model, inference_s, optimizer_of, timed, train_step

    cfg = bench_config(setup.backbone, setup.weights, setup.img_size, setup.batch_size)
    model = build_model(cfg)
    info = model.backbone.info
    data = build_datamodule(cfg, info.mean, info.std)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))  # seeded: the same real crops every run
    images, masks = batch["image"], batch["mask"]
    toolbox = model.toolbox
    optimizer = optimizer_of(model)
    model.train()
    for _, batch in zip(range(setup.select_after), _forever(data), strict=False):
        train_step(model, optimizer, batch["image"], batch["mask"])
    k = resolve_k(GATE_K, len(toolbox.slot_names))
    selections, selection_s = {}, {}
    for method in ("loop", "vmap"):  # the same M images for both; the loop is the default method
        fisher = [(b["image"], b["mask"]) for b in data.fisher_dataloader(setup.num_samples, seed=cfg.train.seed)]
        selections[method], selection_s[method] = timed(lambda m=method, f=fisher: FisherSelector(m).select(
            model, toolbox, f, per_sample_cross_entropy, setup.num_samples, k, 0), images.device)
    gated = selections["loop"]
    cost, calibration_s = timed(lambda: calibrate(model, toolbox, images, masks, per_sample_cross_entropy),
                                images.device)
    budget = Budget(step_fraction=setup.step_fraction)
    aware = budgeted_top_k(gated.normalized, k, cost, budget)
    models = {}
    for name, active in (("merged_gated", gated.active), ("merged_compute_aware", aware)):
        with activated(toolbox, active):
            models[name] = merge_for_inference(model)
    toolbox.set_active([])
    models["bare"] = model.eval()
    return {
        "k": k,
        "gated": gated.active,
        "compute_aware": aware,
        "scores": gated.normalized,
        "selection_s": selection_s,
        "cost_model": cost.to_dict(),
        "calibration_s": calibration_s,
        "budget_record": budget_record(aware, gated.normalized, k, cost, budget),
        "inference_s": inference_s(models, images, setup.warmup_steps, setup.steps),
        "batch": (images.numpy(), masks.numpy()),
    }


def _forever(data: Any) -> Any:
    while True:
        yield from data.train_dataloader()


def measure_config(setup: BenchSetup, config: str, active: list[str] | None, images: np.ndarray,
                   masks: np.ndarray, profile: bool) -> dict[str, Any]:
    """Phase 2, in a fresh process: one configuration's step time, saved activations and peak RSS."""
    from .measure import bench_config, build_model, median_step_s, profile_table, saved_activation_bytes

    if setup.threads:
        torch.set_num_threads(setup.threads)
    model = build_model(bench_config(setup.backbone, setup.weights, setup.img_size, setup.batch_size, config))
    toolbox = model.toolbox
    if active is not None:
        toolbox.set_active(active)
    x, y = torch.from_numpy(images), torch.from_numpy(masks)
    saved = saved_activation_bytes(model, x, y)
    step_s = median_step_s(model, x, y, setup.warmup_steps, setup.steps)
    row = {
        "config": config,
        "active_slots": len(toolbox.active_slots()),
        "active": toolbox.active_slots(),
        "lowest_active_layer": toolbox.lowest_active_layer(),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "step_s": step_s,
        "saved_activation_mb": saved / 2**20,
        "peak_rss_mb": peak_rss_mb(),
    }
    return {**row, "profile": profile_table(model, x, y)} if profile else row


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM belongs to the process image, whereas ru_maxrss
    survives exec and would start a spawned child at its parent's peak."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_benchmark(setup: BenchSetup, profile: bool = False) -> dict[str, Any]:
    selected = select_sets(setup)
    images, masks = selected.pop("batch")
    actives = {"gated": selected["gated"], "compute-aware": selected["compute_aware"]}
    rows = [
        _in_fresh_process(measure_config, setup, c, actives.get(c), images, masks, profile and c == "all-on")
        for c in CONFIGS
    ]
    table = rows[0].pop("profile", None)
    result = summarise(setup, selected, rows)
    if table is not None:
        result["profile"] = table
    return result


def summarise(setup: BenchSetup, selected: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows with ratios against all-on, and the headline ratios (plain ratios: 0.025 means 2.5 %)."""
    by = {r["config"]: r for r in rows}
    base = by["all-on"]
    for r in rows:
        r["step_vs_all_on"] = r["step_s"] / base["step_s"]
        r["activations_vs_all_on"] = r["saved_activation_mb"] / base["saved_activation_mb"]
    loop_s = selected["selection_s"]["loop"]
    inference = selected["inference_s"]

    def rss(config: str) -> float:
        return by[config]["peak_rss_mb"]

    def overhead(config: str) -> float:
        return loop_s / (OVERHEAD_N * by[config]["step_s"] + loop_s)

    ratios = {
        "gated_step_vs_all_on": by["gated"]["step_vs_all_on"],
        "compute_aware_step_vs_all_on": by["compute-aware"]["step_vs_all_on"],
        "lora_step_vs_all_on": by["lora"]["step_vs_all_on"],
        "full_finetune_step_vs_all_on": by["full-finetune"]["step_vs_all_on"],
        "frozen_step_vs_all_on": by["frozen"]["step_vs_all_on"],
        "compute_aware_predicted_step_vs_all_on": selected["budget_record"]["step_fraction"],
        "merged_inference_vs_bare": inference["merged_gated"] / inference["bare"],
        "merged_compute_aware_inference_vs_bare": inference["merged_compute_aware"] / inference["bare"],
        "selection_overhead_at_n100": overhead("gated"),
        "compute_aware_selection_overhead_at_n100": overhead("compute-aware"),
        "compute_aware_peak_rss_vs_full_finetune": rss("compute-aware") / rss("full-finetune"),
    }
    return {
        "setup": asdict(setup),
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
                    "threads": setup.threads or torch.get_num_threads()},
        "ratios": ratios,
        "rows": rows,
        "selection": {
            "k": selected["k"], "num_samples": setup.num_samples, "every": setup.every,
            "gated_active": selected["gated"], "normalized_scores": selected["scores"],
            "methods": {m: {"seconds": s, "overhead_fraction": s / (setup.every * by["gated"]["step_s"] + s)}
                        for m, s in selected["selection_s"].items()},
        },
        "compute_aware": {
            "budget": selected["budget_record"], "cost_model": selected["cost_model"],
            "calibration_s": selected["calibration_s"],
        },
        "inference": {f"{name}_s": seconds for name, seconds in inference.items()},
    }


def _in_fresh_process(target: Any, *args: Any) -> Any:
    """``target(*args)`` in a newly spawned interpreter; its errors come back as errors here."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_child, args=(results, target, *args))
    proc.start()
    while True:
        try:
            status, payload = results.get(timeout=1.0)
            break
        except queue.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"benchmark process died with exit code {proc.exitcode}") from None
    proc.join()
    if status == "user":
        raise UserError(payload)
    if status == "error":
        raise RuntimeError(f"benchmark process failed:\n{payload}")
    return payload


def _child(results: Any, target: Any, *args: Any) -> None:
    try:
        results.put(("ok", target(*args)))
    except UserError as err:
        results.put(("user", str(err)))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def format_table(result: dict[str, Any]) -> str:
    lines = [
        "| config | active slots | lowest active | trainable params | step (s) | × all-on | "
        "saved activations (MB) | × all-on | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lowest = "–" if r["lowest_active_layer"] is None else r["lowest_active_layer"]
        lines.append(
            f"| {r['config']} | {r['active_slots']} | {lowest} | {r['trainable_params']:,} | {r['step_s']:.3f} | "
            f"{r['step_vs_all_on']:.2f} | {r['saved_activation_mb']:.0f} | {r['activations_vs_all_on']:.2f} | "
            f"{r['peak_rss_mb']:.0f} |"
        )
    lines.append("")
    lines += [f"{name}: {value:.3f}" for name, value in result["ratios"].items()]
    return "\n".join(lines)


def benchmark_cli(args: argparse.Namespace) -> None:
    if args.io:
        from .io import io_cli

        return io_cli(args)
    if args.img_size < 14 or args.batch_size < 1 or args.steps < 1 or args.num_samples < 1:
        raise UserError("benchmark needs --img-size >= 14, --batch-size >= 1, --steps >= 1, --num-samples >= 1")
    Budget(step_fraction=args.step_fraction)  # a bad budget fails now, not after the selection phase
    setup = BenchSetup(
        weights=args.weights, backbone=args.backbone, img_size=args.img_size, batch_size=args.batch_size,
        steps=args.steps, warmup_steps=args.warmup_steps, select_after=args.select_after, every=args.every,
        num_samples=args.num_samples, step_fraction=args.step_fraction, threads=torch.get_num_threads(),
    )
    if args.profile is not None:
        os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's child process: no GPU-probe errors
    result = run_benchmark(setup, profile=args.profile is not None)
    result["command"] = setup.command(args.out, args.profile)
    if args.profile is not None:
        header = f"# torch.profiler: one all-on training step, by self CPU time\n# {result['command']}\n\n"
        atomic_write_text(args.profile, header + result.pop("profile") + "\n")
        print(f"saved {args.profile}")
    print(format_table(result))
    if args.out:
        atomic_write_json(args.out, result)
        print(f"saved {args.out}")
    print(f"reproduce: {result['command']}")
