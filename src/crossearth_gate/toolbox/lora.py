"""Spatial module: LoRA on the query and value slices of a ViT block's fused ``qkv`` projection.

The low-rank factors live in the toolbox (``QueryValueLoRA``: what is trained, switched and saved); the
block's ``attn.qkv`` is replaced by a ``LoRAQKV`` that wraps the same frozen weight and adds the factors'
delta to its output. The block's own attention code (timm's ViT, SAM's windowed attention with relative
positions, anything that calls ``self.qkv(x)``) therefore runs unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..util.errors import UserError


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

    def forward(self, x: Tensor) -> Tensor:
        """The delta of the fused qkv output for tokens ``x`` (..., C): [s·B_q A_q x, 0, s·B_v A_v x]."""
        dq = (x @ self.a_q.t()) @ self.b_q.t()
        dv = (x @ self.a_v.t()) @ self.b_v.t()
        return torch.cat([dq * self.scaling, torch.zeros_like(dq), dv * self.scaling], dim=-1)

    def weight_delta(self) -> Tensor:
        """The same delta as a (3C, C) matrix to add to the fused weight: rows q, k (zero), v."""
        dq = self.scaling * (self.b_q @ self.a_q)
        return torch.cat([dq, torch.zeros_like(dq), self.scaling * (self.b_v @ self.a_v)], dim=0)

    def output_weights(self) -> list[nn.Parameter]:
        """The zero-initialised matrices (B_q, B_v): what ``toolbox.up_init_std`` draws at random instead."""
        return [self.b_q, self.b_v]


class LoRAQKV(nn.Linear):
    """A fused qkv ``Linear`` that adds its LoRA's delta to the output while switched on.

    It holds the wrapped layer's own ``weight`` and ``bias`` (the same tensors, under the same state-dict
    names, so backbone checkpoints and fine-tuned backbone weights load as before). The LoRA is referenced,
    not registered: its parameters belong to the toolbox, which saves them and sets their ``requires_grad``.
    ``merge()`` folds the delta into the weight (inference pays nothing); ``unmerge()`` takes it out again.
    While merged, switching on adds nothing, so a delta is never applied twice.
    """

    def __init__(self, base: nn.Linear, lora: QueryValueLoRA):
        nn.Module.__init__(self)
        if base.out_features != 3 * base.in_features or lora.a_q.shape[1] != base.in_features:
            raise UserError(f"spatial (LoRA) slots need a fused qkv Linear of width {lora.a_q.shape[1]} → "
                            f"3×{lora.a_q.shape[1]}, found {base.in_features} → {base.out_features}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.register_parameter("weight", base.weight)
        self.register_parameter("bias", base.bias)
        self._lora = (lora,)  # a tuple: nn.Module would register a bare module as a child
        self.enabled = False
        self.merged = False

    @property
    def lora(self) -> QueryValueLoRA:
        return self._lora[0]

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.enabled and not self.merged:
            out = out + self.lora(x)
        return out

    @torch.no_grad()
    def merge(self) -> None:
        """W ← W + s·[B_q A_q; 0; B_v A_v] (once; a second call does nothing)."""
        if not self.merged:
            self.weight += self.lora.weight_delta().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo ``merge`` (up to float rounding); the LoRA applies on the fly again."""
        if self.merged:
            self.weight -= self.lora.weight_delta().to(self.weight.dtype)
            self.merged = False


def wrap_qkv(attn: nn.Module, lora: QueryValueLoRA) -> LoRAQKV:
    """Replace ``attn.qkv`` by a ``LoRAQKV`` around it (idempotent for the same LoRA); return the wrapper."""
    qkv = getattr(attn, "qkv", None)
    if isinstance(qkv, LoRAQKV):
        if qkv.lora is not lora:
            raise UserError("this attention's qkv already carries another toolbox's LoRA")
        return qkv
    if not isinstance(qkv, nn.Linear):
        raise UserError(f"spatial (LoRA) slots need an attention with a fused qkv Linear, found "
                        f"{type(attn).__name__} with qkv {type(qkv).__name__}")
    wrapper = LoRAQKV(qkv, lora)
    attn.qkv = wrapper
    return wrapper
