"""A miniature segmenter that is its own switchboard, for the gating tests: frozen conv stem and blocks with a
spatial, semantic and frequency slot per layer; inactive slots are skipped. Small enough for brute force."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TYPES = ("spatial", "semantic", "frequency")
CLASSES = 4


class LowRank(nn.Module):
    """LoRA-like: up(down(x)) with the up-projection zero-initialised."""

    def __init__(self, width: int, rank: int = 2):
        super().__init__()
        self.down = nn.Conv2d(width, rank, 1, bias=False)
        self.up = nn.Conv2d(rank, width, 1, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.down(x))


class TinySlotNet(nn.Module):
    """Frozen conv stem/blocks with spatial/semantic/frequency slots per layer; skips inactive slots."""

    def __init__(self, width: int = 6, layers: int = 2):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(layers))
        self.spatial = nn.ModuleList(LowRank(width) for _ in range(layers))
        self.semantic = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, 3, 1), nn.GELU(), nn.Conv2d(3, width, 1)) for _ in range(layers)
        )
        self.frequency = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(layers))
        self.drop = nn.Dropout(0.5)
        self.head = nn.Conv2d(width, CLASSES, 1)
        for frozen in (self.stem, self.blocks):
            frozen.requires_grad_(False)
        self.slot_names = [f"{t}.{i}" for t in TYPES for i in range(layers)]
        self._active = set(self.slot_names)

    def slot_module(self, name: str) -> nn.Module:
        slot_type, layer = name.split(".")
        return getattr(self, slot_type)[int(layer)]

    def slot_parameters(self, name: str) -> list[nn.Parameter]:
        return list(self.slot_module(name).parameters())

    def active_slots(self) -> list[str]:
        return [n for n in self.slot_names if n in self._active]

    def set_active(self, names) -> None:
        self._active = set(names)
        for n in self.slot_names:
            self.slot_module(n).requires_grad_(n in self._active)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.stem(x))
        for i, block in enumerate(self.blocks):
            h = h + torch.tanh(block(h))
            for t in TYPES:
                if f"{t}.{i}" in self._active:
                    h = h + torch.tanh(getattr(self, t)[i](h))
        return self.head(self.drop(h))


def per_sample_ce(logits: Tensor, target: Tensor) -> Tensor:
    """Per-pixel cross-entropy averaged over each image's labelled pixels (255 = ignore)."""
    pixels = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    valid = (target != 255).to(pixels.dtype)
    return pixels.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1)


def make_data(n: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = torch.randint(0, CLASSES, (n, 8, 8), generator=g)
    y[torch.rand(n, 8, 8, generator=g) < 0.2] = 255
    return x, y


def batched(x: Tensor, y: Tensor, size: int) -> list[tuple[Tensor, Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]
