"""Counted cost of one training step of each backbone-ablation config (configs/benchmarks/backbones/).

Each config's model (its backbone at full size, every slot on, Mask2Former at the paper's sizes) is built with
random weights on PyTorch's meta device (shapes only: ViT-L costs no compute or memory) and one forward and
backward of one image at the config's crop is counted: FLOPs (torch.utils.flop_counter: matmuls,
convolutions, attention) and the float32 bytes autograd saves for backward, attention probability maps
apart (the CPU's math kernel saves them, CUDA's fused kernels do not; SAM's windowed blocks have
196-token maps, its global ones one per image). The loss is the sum of every head output, which sends
gradients through the same tensors as Mask2Former's loss. docs/gpu.md turns these counts into time and
memory estimates.

    python benchmarks/backbone_step_cost.py --out benchmarks/backbone_step_cost.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "benchmarks" / "backbones"
NUM_CLASSES = 5  # CASID's


def attention_sizes(model: Any, size: int) -> set[int]:
    """Token counts of the attention maps: the whole grid (+ prefix), and SAM's windows."""
    grid = size // model.backbone.patch_size
    sizes = {grid * grid + model.backbone.info.num_prefix_tokens}
    sizes |= {b.window_size**2 for b in model.backbone.vit.blocks if getattr(b, "window_size", 0) > 0}
    return sizes


def step_cost(config: Path) -> dict[str, Any]:
    from crossearth_gate.config.schema import load_config
    from crossearth_gate.training.task import build_segmentor

    cfg = load_config(str(config), ["model.weights=none"])
    torch.manual_seed(0)
    with torch.device("meta"):
        model = build_segmentor(cfg, NUM_CLASSES)
    model = model.to("meta").eval()  # eval: same FLOPs, no data-dependent checks meta cannot run
    size = cfg.data.crop_size
    images = torch.randn(1, 3, size, size, device="meta")
    maps = attention_sizes(model, size)
    saved = {"activations": 0, "attention_maps": 0}

    def pack(t: torch.Tensor) -> torch.Tensor:
        is_map = t.dim() >= 2 and t.shape[-1] == t.shape[-2] and t.shape[-1] in maps
        saved["attention_maps" if is_map else "activations"] += t.numel() * t.element_size()
        return t

    counter = FlopCounterMode(display=False)
    with counter:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            outputs = model.head_outputs(images)
            loss = sum(t.sum() for t in (*outputs.class_logits, *outputs.mask_logits))
        forward = counter.get_total_flops()
        loss.backward()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "config": str(config.relative_to(ROOT)), "backbone": cfg.model.backbone, "img_size": size,
        "depth": model.backbone.info.depth, "width": model.backbone.info.embed_dim,
        "slots": len(model.toolbox.slot_names), "batch_size": 1,
        "params_total": sum(p.numel() for p in model.parameters()), "params_trainable": trainable,
        "params_slots": sum(p.numel() for p in model.toolbox.parameters()),
        "forward_flops": forward, "step_flops": counter.get_total_flops(),
        "saved_bytes_fp32": saved["activations"], "saved_attention_map_bytes_fp32": saved["attention_maps"],
        "weights_bytes_fp32": 4 * sum(p.numel() for p in model.parameters()),
        "grad_and_adamw_state_bytes_fp32": 3 * 4 * trainable,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = []
    for config in sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("_")):
        rows.append(step_cost(config))
        print(json.dumps(rows[-1]), flush=True)
    record = {"command": f"python benchmarks/backbone_step_cost.py --out {args.out}", "torch": torch.__version__,
              "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
