"""Spatial module: LoRA on the query and value slices of a ViT block's fused ``qkv`` projection."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class QueryValueLoRA(nn.Module):
    """Low-rank updates W_q += s·B_q A_q and W_v += s·B_v A_v; the key projection is left alone.

    B is zero-initialised so an untrained module leaves the backbone's attention unchanged.
    """

    def __init__(self, dim: int, rank: int, alpha: float | None = None):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.rank = rank
        self.scaling = (alpha if alpha is not None else rank) / rank
        self.a_q = nn.Parameter(torch.empty(rank, dim))
        self.b_q = nn.Parameter(torch.zeros(dim, rank))
        self.a_v = nn.Parameter(torch.empty(rank, dim))
        self.b_v = nn.Parameter(torch.zeros(dim, rank))
        for a in (self.a_q, self.a_v):
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return the (query, value) deltas for tokens ``x`` (B, N, C)."""
        dq = (x @ self.a_q.t()) @ self.b_q.t()
        dv = (x @ self.a_v.t()) @ self.b_v.t()
        return dq * self.scaling, dv * self.scaling

    def output_weights(self) -> list[nn.Parameter]:
        """The zero-initialised matrices (B_q, B_v): what ``toolbox.up_init_std`` draws at random instead."""
        return [self.b_q, self.b_v]

    @torch.no_grad()
    def merge_into(self, qkv: nn.Linear) -> None:
        """Fold the low-rank deltas into a fused qkv weight (for inference: no extra cost)."""
        dim = self.a_q.shape[1]
        qkv.weight[:dim] += self.scaling * (self.b_q @ self.a_q)
        qkv.weight[2 * dim :] += self.scaling * (self.b_v @ self.a_v)
