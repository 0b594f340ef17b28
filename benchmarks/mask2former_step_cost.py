"""Parameters, FLOPs and memory of one training step (forward + backward) of a DINOv2 ViT + Mask2Former.

The model is the benchmark config's (configs/benchmarks/casid_sub2tem.yaml: all three module types in
every block, Mask2Former at the paper's sizes) with random weights. Each backbone is counted on PyTorch's
meta device (shapes only: ViT-L costs no compute or memory), where the loss is the sum of every head
output: that sends gradients through the same tensors as Mask2Former's loss, whose matching and point
sampling need real numbers (and add few FLOPs). ``--cpu-backbones`` also run the real loss on real CPU
tensors, in their own process, for the time and ``peak_rss_step_bytes`` (peak resident memory during the
step minus that before it).

FLOPs are torch.utils.flop_counter's (matmuls, convolutions, attention; the deformable attention's
grid_sample and elementwise ops are not counted); take them from the meta rows, as the counter misses
the fused CPU attention kernel in the cpu rows. ``head_step_flops`` is the head and its loss, forward and
backward, counted apart. Saved bytes are what autograd keeps for backward in float32, attention
probability maps (B x heads x T x T) apart: the math kernel saves them, CUDA's fused kernels do not.
docs/gpu.md turns these numbers into time and memory estimates for one GPU.

    python benchmarks/mask2former_step_cost.py --out benchmarks/mask2former_step_cost.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "benchmarks" / "casid_sub2tem.yaml"
NUM_CLASSES = 5  # CASID's


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def step_cost(backbone: str, size: int, batch: int, device: str, rounds: int = 3) -> dict[str, Any]:
    """One forward + backward, counted. On ``meta`` (no data, no memory: ViT-L costs nothing) the loss is the
    sum of every head output, which sends gradients through the same tensors as Mask2Former's loss (its
    matching and point sampling, uncounted either way, need real numbers); on ``cpu`` it is the real loss."""
    from crossearth_gate.benchmark.measure import counting_saved_bytes
    from crossearth_gate.config.schema import load_config
    from crossearth_gate.training.task import build_segmentor

    cfg = load_config(str(CONFIG), [f"model.backbone={backbone}", "model.weights=none", f"data.crop_size={size}"])
    torch.manual_seed(0)
    with torch.device(device):
        model = build_segmentor(cfg, NUM_CLASSES)
    # eval: the same FLOPs (no dropout here), without the encoder's data-dependent overflow check meta cannot run
    model = model.to(device).eval()
    images = torch.randn(batch, 3, size, size, device=device)
    masks = torch.zeros(batch, size, size, dtype=torch.long, device=device)
    masks[:, : size // 2] = 1
    masks[:, size // 2 :, size // 2 :] = 2
    tokens = (size // model.backbone.patch_size) ** 2 + model.backbone.info.num_prefix_tokens
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rss_before = _rss_bytes()
    counter = FlopCounterMode(display=False)
    start = time.perf_counter()
    with counter:
        with counting_saved_bytes(attention_tokens=tokens) as saved:
            loss = _loss(model, model.head_outputs(images), masks, device)
        forward = counter.get_total_flops()
        loss.backward()
    seconds, peak_rss = time.perf_counter() - start, _rss_bytes()
    with torch.no_grad():
        features = [f.detach() for f in model.backbone(images, model.toolbox)]
    head_counter = FlopCounterMode(display=False)  # module attribution in backward is unreliable: count apart
    with head_counter:
        outputs = model.head(features)
        _loss(model, outputs, masks, device).backward()
    row = {
        "backbone": backbone, "head": cfg.model.head, "head_channels": cfg.model.head_channels,
        "head_kwargs": cfg.model.head_kwargs, "toolbox": list(cfg.toolbox.types), "img_size": size,
        "batch_size": batch, "tokens": tokens, "device": device,
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_trainable": trainable,
        "params_head": sum(p.numel() for p in model.head.parameters()),
        "forward_flops": forward,
        "head_step_flops": head_counter.get_total_flops(),  # forward + backward of the head and its loss
        "step_flops": counter.get_total_flops(),
        "saved_bytes_fp32": saved["activations"], "saved_attention_map_bytes_fp32": saved["attention_maps"],
        "grad_and_adamw_state_bytes_fp32": 3 * 4 * trainable,
    }
    if device == "cpu":
        steps = timed_cpu_steps(model, images, masks, rounds)
        row.update({"peak_rss_step_bytes": peak_rss - rss_before, "cpu_first_step_seconds": round(seconds, 2),
                    "cpu_step_seconds": round(steps["median"], 3), "cpu_step_seconds_spread": steps,
                    "cpu_threads": torch.get_num_threads()})
    return row


def timed_cpu_steps(model: Any, images: torch.Tensor, masks: torch.Tensor, rounds: int) -> dict[str, Any]:
    """The step after the counted one, ``rounds`` times (the counted one was the warm-up): median and min–max,
    as the benchmark's rounds (crossearth_gate.benchmark.spread), with its warning when the spread relative to
    the median is wider than ±0.05."""
    from crossearth_gate.benchmark.spread import spread, warning_line, wide

    times = []
    for _ in range(rounds):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        _loss(model, model.head_outputs(images), masks, "cpu").backward()
        times.append(time.perf_counter() - start)
    record = spread(times)
    relative = spread([t / record["median"] for t in times])
    if line := warning_line(wide({"cpu_step_seconds / median": relative}), rounds):
        print(line, file=sys.stderr)
    return record


def _loss(model: Any, outputs: Any, masks: torch.Tensor, device: str) -> torch.Tensor:
    from crossearth_gate.training.losses import segmentation_loss

    if device == "meta":
        return sum(t.sum() for t in (*outputs.class_logits, *outputs.mask_logits))
    return segmentation_loss(model, outputs, masks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["vit_small_patch14_dinov2", "vit_base_patch14_dinov2",
                                                           "vit_large_patch14_dinov2"], help="counted on meta")
    parser.add_argument("--cpu-backbones", nargs="*", default=["vit_small_patch14_dinov2"],
                        help="also run for real on the CPU (time, resident memory)")
    parser.add_argument("--img-size", type=int, default=518)  # 37 patches of 14: the benchmarks' crop
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="cpu rows: timed steps after the counted one")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: BACKBONE DEVICE, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(step_cost(args.one[0], args.img_size, args.batch_size, args.one[1], args.rounds)))
        return
    cases = [(b, "meta") for b in args.backbones] + [(b, "cpu") for b in args.cpu_backbones]
    rows = []
    for backbone, device in cases:  # one process each: its own peak resident memory
        run = subprocess.run([sys.executable, __file__, "--one", backbone, device, "--img-size", str(args.img_size),
                              "--batch-size", str(args.batch_size), "--rounds", str(args.rounds)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
        sys.stderr.writelines(line for line in run.stderr.splitlines(True) if line.startswith("WARNING: spread"))
        print(json.dumps(rows[-1]), flush=True)
    import transformers

    command = (f"python benchmarks/mask2former_step_cost.py --img-size {args.img_size} --batch-size {args.batch_size}"
               f" --rounds {args.rounds}"
               f" --backbones {' '.join(args.backbones)} --cpu-backbones {' '.join(args.cpu_backbones)}")
    record = {"command": f"{command} --out {args.out}", "torch": torch.__version__,
              "transformers": transformers.__version__, "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
