"""What the FPN head's fusing convolution costs: training steps with ``fuse_kernel`` 3 (default) and 1, side by side.

Why: the fusion runs on every level's channels at the finest stride (heads/fpn.py), the largest single
convolution of a step. Each round times one step of every (configuration, kernel) pair in turn on the
real DINOv2 ViT-S/14 and a real Dubai batch shape, so a drifting machine moves both sides of a ratio
alike; the figures are the median over rounds with their min–max. FLOPs are counted once per model
(torch.utils.flop_counter), the head's share with them.

    python benchmarks/fpn_fuse_cost.py --img-size 168 --rounds 5 --out benchmarks/fpn_fuse_cost.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from crossearth_gate.benchmark.measure import bench_config, build_model, optimizer_of, timed_steps, train_step
from crossearth_gate.benchmark.spread import spread

CONFIGS = ("all-on", "frozen")
KERNELS = (3, 1)


def step_flops(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    """Forward+backward FLOPs of one training step, in total and inside the head."""
    counter = FlopCounterMode(display=False)
    with counter:
        train_step(model, torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0), images, masks)
    (head,) = [sum(ops.values()) for name, ops in counter.get_flop_counts().items() if name.endswith(".head")]
    return {"total": float(counter.get_total_flops()), "head": float(head)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=168)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per pair per round (median kept)")
    parser.add_argument("--weights", default="auto")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    plain = bench_config("vit_small_patch14_dinov2", "none", args.img_size, args.batch_size)
    classes = len(plain.data.source.info.classes)
    masks = torch.randint(0, classes, (args.batch_size, args.img_size, args.img_size))
    pairs, flops = {}, {}
    for config in CONFIGS:
        for kernel in KERNELS:
            cfg = bench_config("vit_small_patch14_dinov2", args.weights, args.img_size, args.batch_size, config)
            cfg = replace(cfg, model=replace(cfg.model, head_kwargs={"fuse_kernel": kernel}))
            model = build_model(cfg)
            name = f"{config}/fuse{kernel}"
            flops[name] = step_flops(model, images, masks)
            optimizer = optimizer_of(model)
            timed_steps(model, optimizer, images, masks, 2)  # warm-up: allocations, AdamW state
            pairs[name] = (model, optimizer)
    rounds = []
    for index in range(args.rounds):
        times = {name: sorted(timed_steps(m, o, images, masks, args.steps))[args.steps // 2]
                 for name, (m, o) in pairs.items()}
        rounds.append(times)
        print(f"round {index + 1}: " + ", ".join(f"{n} {t:.3f} s" for n, t in times.items()), flush=True)
    ratios = {
        **{f"{c}: fuse1 vs fuse3": spread([r[f"{c}/fuse1"] / r[f"{c}/fuse3"] for r in rounds]) for c in CONFIGS},
        "frozen/fuse3 vs all-on/fuse3": spread([r["frozen/fuse3"] / r["all-on/fuse3"] for r in rounds]),
        "frozen/fuse1 vs all-on/fuse3": spread([r["frozen/fuse1"] / r["all-on/fuse3"] for r in rounds]),
    }
    for name, s in ratios.items():
        print(f"{name}: {s['median']:.3f} (min {s['min']:.3f}, max {s['max']:.3f})")
    for name, f in flops.items():
        print(f"{name}: {f['total'] / 1e9:.1f} GFLOP per step, head {f['head'] / f['total']:.1%}")
    record = {"command": shlex.join(["python", *sys.argv]), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "img_size": args.img_size, "batch_size": args.batch_size,
              "step_s": {name: spread([r[name] for r in rounds]) for name in pairs}, "ratios": ratios,
              "flops": flops}
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
