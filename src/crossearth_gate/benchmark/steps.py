"""One configuration's training steps, measured in its own process once per round (see ``workers``)."""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .measure import bench_config, build_model, optimizer_of, profile_table, saved_activation_bytes, timed_steps


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM belongs to the process image, whereas ru_maxrss
    survives exec and would start a spawned child at its parent's peak."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StepMeasurer:
    """Built once (model, saved activations, warm-up steps); each ``measure()`` times ONE training step.

    The rounds interleave the configurations step by step (``command.one_round``), so a configuration's
    steps and the all-on steps it is divided by are seconds apart, not a whole round apart.
    """

    def __init__(self, setup: Any, config: str, active: list[str] | None, images: np.ndarray, masks: np.ndarray,
                 profile: bool):
        if setup.threads:
            torch.set_num_threads(setup.threads)
        self.setup, self.config, self.profile = setup, config, profile
        self.model = build_model(bench_config(setup.backbone, setup.weights, setup.img_size, setup.batch_size, config))
        if active is not None:
            self.model.toolbox.set_active(active)
        self.x, self.y = torch.from_numpy(images), torch.from_numpy(masks)
        self.saved = saved_activation_bytes(self.model, self.x, self.y)
        self.optimizer = optimizer_of(self.model)
        timed_steps(self.model, self.optimizer, self.x, self.y, setup.warmup_steps)

    def measure(self) -> dict[str, Any]:
        return {"step_s": timed_steps(self.model, self.optimizer, self.x, self.y, 1)[0]}

    def finish(self) -> dict[str, Any]:
        toolbox = self.model.toolbox
        row = {
            "config": self.config,
            "active_slots": len(toolbox.active_slots()),
            "active": toolbox.active_slots(),
            "lowest_active_layer": toolbox.lowest_active_layer(),
            "trainable_params": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            "saved_activation_mb": self.saved / 2**20,
            "peak_rss_mb": peak_rss_mb(),
        }
        return {**row, "profile": profile_table(self.model, self.x, self.y)} if self.profile else row
