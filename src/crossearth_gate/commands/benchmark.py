"""``crossearth-gate benchmark``: step time, memory, selection and inference cost of every configuration."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "benchmark"
OUT_FILES: tuple[str, ...] = ("out", "profile")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="step time, memory, selection and inference cost of every configuration, "
                                  "on real selections over the demo images")
    p.add_argument("--weights", default="auto", help="backbone weights, as model.weights (default: auto)")
    p.add_argument("--backbone", default="vit_small_patch14_dinov2")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    p.add_argument("--warmup-steps", type=int, default=2, help="untimed steps before timing")
    p.add_argument("--select-after", type=int, default=5, help="all-on training steps before the Fisher selection")
    p.add_argument("--every", type=int, default=100, help="gate re-selection interval N")
    p.add_argument("--num-samples", type=int, default=4, help="Fisher samples M (default 4, as gate.num_samples)")
    p.add_argument("--step-fraction", type=float, default=0.6, help="the compute-aware gate's budget (of all-on)")
    p.add_argument("--rounds", type=int, default=3, help="rounds: every configuration once per round")
    p.add_argument("--predict-size", type=int, default=1024,
                   help="side of the GeoTIFF predicted per round (0: no predict section)")
    p.add_argument("--out", type=Path, help="JSON file for the results")
    p.add_argument("--profile", type=Path, help="text file for torch.profiler's table of one all-on training step")
    p.add_argument("--sets", type=Path, help="time the gated sets of this file (from --select-only or an earlier "
                                             "benchmark JSON) instead of this run's selections")
    p.add_argument("--select-only", action="store_true", help="only select the gated sets; write them to --out")
    p.add_argument("--io", action="store_true", help="instead: training-crop reading, GeoTIFF windows vs JPEG tiles "
                                                     "(crops of --img-size), and peak RSS by scene size")
    p.add_argument("--io-crops", type=int, default=40, help="--io: crops per round and reader (5 rounds)")
    p.add_argument("--io-sizes", type=int, nargs=3, default=[8192, 2000, 20000], metavar=("SPEED", "SMALL", "LARGE"),
                   help="--io: side of the speed scene, and of the small and large memory scenes")


def run(args: argparse.Namespace) -> None:
    from ..benchmark.command import benchmark_cli

    benchmark_cli(args)
