"""FLOPs and autograd-saved bytes of one training step, counted on PyTorch's meta device.

Meta tensors carry shapes but no data, so ViT-L at 518² costs no compute here: the FLOPs are
torch.utils.flop_counter's counts for the real graph, and the saved bytes are exactly what autograd
keeps for backward in float32. Attention probability maps (B x heads x T x T) are reported apart: on
this CPU path SDPA's math kernel saves them, while CUDA's fused kernels do not. docs/gpu.md turns
these counts into time and memory estimates for one GPU.

    python benchmarks/step_cost_meta.py --out benchmarks/step_cost_meta.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from crossearth_gate.benchmark.measure import counting_saved_bytes
from crossearth_gate.config.schema import load_config
from crossearth_gate.heads.losses import cross_entropy
from crossearth_gate.training.task import build_segmentor

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "benchmarks" / "casid_sub2tem.yaml"
CASES = {  # what the step trains: every slot (the gate's scoring pass; a gated step's upper bound), none
    "all_on": [],
    "frozen": ["toolbox.types=[]", "gate.enabled=false"],
}


def step_cost(backbone: str, size: int, batch: int, overrides: list[str]) -> dict[str, Any]:
    """One forward + backward of the benchmark config's model (FPN head at 8 channels: backbone + slots)."""
    cfg = load_config(str(CONFIG), [f"model.backbone={backbone}", "model.weights=none", "model.head=fpn",
                                    "model.head_channels=8", f"data.crop_size={size}", *overrides])
    with torch.device("meta"):
        model = build_segmentor(cfg, 5)
    model.train()
    images = torch.empty(batch, 3, size, size, device="meta")
    masks = torch.zeros(batch, size, size, dtype=torch.long, device="meta")
    tokens = (size // model.backbone.patch_size) ** 2 + model.backbone.info.num_prefix_tokens
    counter = FlopCounterMode(display=False)
    with counter:
        with counting_saved_bytes(attention_tokens=tokens) as saved:
            loss = cross_entropy(model(images), masks)
        forward = counter.get_total_flops()
        loss.backward()
    return {
        "backbone": backbone, "img_size": size, "batch_size": batch, "tokens": tokens,
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "forward_flops": forward, "step_flops": counter.get_total_flops(),
        "saved_bytes_fp32": saved["activations"], "saved_attention_map_bytes_fp32": saved["attention_maps"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["vit_small_patch14_dinov2", "vit_base_patch14_dinov2",
                                                           "vit_large_patch14_dinov2"])
    parser.add_argument("--img-size", type=int, default=518)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = [{"case": case, **step_cost(b, args.img_size, args.batch_size, overrides)}
            for b in args.backbones for case, overrides in CASES.items()]
    args.out.write_text(json.dumps({"command": "python benchmarks/step_cost_meta.py --out " + str(args.out),
                                    "torch": torch.__version__, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
