"""Learning-rate schedule: linear warm-up then polynomial decay to zero at ``max_steps``."""

from __future__ import annotations

import torch


def warmup_poly_lambda(step: int, warmup_steps: int, max_steps: int, power: float) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return (1.0 - progress) ** power


def warmup_poly(
    optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int, power: float = 1.0
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_poly_lambda(step, warmup_steps, max_steps, power)
    )
