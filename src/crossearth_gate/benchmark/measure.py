"""What the benchmark measures, on the demo protocol's real model and images: training steps, the bytes
autograd saves, Fisher selection, calibration and inference, and one profiled step.

The model comes from the demo config with the benchmark's overrides (the same builder training uses),
so every configuration is exactly what ``crossearth-gate fit`` would train.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from ..config.schema import RunConfig, load_config
from ..heads.losses import cross_entropy
from ..model.segmentor import Segmentor

LR = 3e-4  # fixed, whatever the config's train.lr: only the optimiser's work matters here, not where it leads

# configuration -> config overrides that make it (the paper's baselines, as in configs/baselines)
CONFIG_OVERRIDES: dict[str, list[str]] = {
    "all-on": [],
    "gated": [],
    "compute-aware": [],
    "lora": ["toolbox.types=[spatial]"],
    "full-finetune": ["toolbox.types=[]", "gate.enabled=false", "model.finetune_backbone=true"],
    "frozen": ["toolbox.types=[]", "gate.enabled=false"],
}


def bench_config(backbone: str, weights: str, img_size: int, batch_size: int, config: str = "all-on") -> RunConfig:
    return load_config("dubai_tiles", [
        f"model.backbone={backbone}", f"model.weights={weights}", f"data.crop_size={img_size}",
        f"data.batch_size={batch_size}", "data.num_workers=0", *CONFIG_OVERRIDES[config],
    ])


def build_model(cfg: RunConfig) -> Segmentor:
    from ..training.task import build_segmentor

    return build_segmentor(cfg, len(cfg.data.source.info.classes))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model: Segmentor, optimizer: torch.optim.Optimizer, images: Tensor, masks: Tensor) -> None:
    """One optimisation step as training runs it: forward, batch loss, backward, AdamW."""
    cross_entropy(model(images), masks).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def optimizer_of(model: Segmentor) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)


def timed_steps(model: Segmentor, optimizer: torch.optim.Optimizer, images: Tensor, masks: Tensor,
                steps: int) -> list[float]:
    """Wall time of each of ``steps`` training steps (the caller warms up: allocations, AdamW state)."""
    model.train()
    times = []
    for _ in range(steps):
        sync(images.device)
        start = time.perf_counter()
        train_step(model, optimizer, images, masks)
        sync(images.device)
        times.append(time.perf_counter() - start)
    return times


@contextmanager
def counting_saved_bytes(attention_tokens: int | None = None) -> Iterator[dict[str, int]]:
    """Bytes of the tensors autograd keeps for backward inside the block: the activation memory a step needs.

    With ``attention_tokens`` T, attention probability maps (... x T x T) are counted apart: the CPU's math
    kernel saves them, CUDA's fused kernels do not.
    """
    saved = {"activations": 0, "attention_maps": 0}

    def pack(t: Tensor) -> Tensor:
        is_map = attention_tokens is not None and t.dim() >= 2 and tuple(t.shape[-2:]) == (attention_tokens,) * 2
        saved["attention_maps" if is_map else "activations"] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield saved


def saved_activation_bytes(model: Segmentor, images: Tensor, masks: Tensor) -> int:
    """Bytes of tensors autograd keeps for backward: the activation memory that early stopping saves."""
    model.train()
    with counting_saved_bytes() as saved:
        loss = cross_entropy(model(images), masks)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return saved["activations"]


def profile_table(model: Segmentor, images: Tensor, masks: Tensor, rows: int = 30) -> str:
    """``torch.profiler`` of one training step, the top ``rows`` operators by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    optimizer = optimizer_of(model)
    model.train()
    train_step(model, optimizer, images, masks)  # allocations and optimiser state outside the profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_step(model, optimizer, images, masks)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - start


@torch.inference_mode()
def inference_s(models: dict[str, Segmentor], images: Tensor, warmup: int, steps: int) -> dict[str, float]:
    """Median forward time of each eval-mode model on the same batch, interleaved so drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        model.eval()
    for step in range(warmup + steps):
        for name, model in models.items():
            _, seconds = timed(lambda m=model: m(images), images.device)
            if step >= warmup:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}
