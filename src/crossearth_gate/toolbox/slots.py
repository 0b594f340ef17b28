"""Slots: one module of each type in every block, switchable on/off, plus the slot-aware block forward.

A *slot* is (type, layer), named ``"<type>.<layer>"``. An inactive slot is skipped in the forward pass
(its module is never called) and its parameters have ``requires_grad=False``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..util.errors import UserError
from .adapter import ParallelAdapter
from .frequency import FrequencyAdapter
from .lora import QueryValueLoRA

SLOT_TYPES = ("spatial", "semantic", "frequency")


@dataclass
class ToolboxConfig:
    """Which module types get slots and how big they are; ``None`` sizes scale with the backbone width."""

    types: tuple[str, ...] = SLOT_TYPES
    lora_rank: int | None = None  # default width/16 (64 for ViT-L, as in the paper)
    lora_alpha: float | None = None  # default = rank (scaling 1)
    adapter_dim: int | None = None  # default width/16
    adapter_scale: float = 0.1
    frequency_dim: int | None = None  # default width/32
    frequency_cutoff: float = 0.25
    frequency_scale_init: float = 0.1
    # std of a normal draw for the output matrices that are otherwise 0 (LoRA's B, the up-projections).
    # 0 keeps the usual zero start (an untrained slot changes nothing); > 0 gives the Fisher gate non-zero
    # gradients upstream of those matrices at its first selection, at the cost of a perturbed start.
    up_init_std: float = 0.0

    def __post_init__(self) -> None:
        self.types = tuple(self.types)
        unknown = [t for t in self.types if t not in SLOT_TYPES]
        if unknown:
            raise UserError(f"unknown module types {unknown}; choose from {list(SLOT_TYPES)}")

    def sizes(self, dim: int) -> dict[str, int]:
        return {
            "lora_rank": self.lora_rank or max(1, dim // 16),
            "adapter_dim": self.adapter_dim or max(1, dim // 16),
            "frequency_dim": self.frequency_dim or max(1, dim // 32),
        }


def slot_name(slot_type: str, layer: int) -> str:
    return f"{slot_type}.{layer}"


def parse_slot(name: str) -> tuple[str, int]:
    slot_type, _, layer = name.partition(".")
    if slot_type not in SLOT_TYPES or not layer.isdigit():
        raise UserError(f"bad slot name {name!r}: expected '<type>.<layer>' with type in {list(SLOT_TYPES)}")
    return slot_type, int(layer)


class Toolbox(nn.Module):
    """All slots of a backbone, grouped by type; implements the gate's switchboard."""

    def __init__(self, dim: int, depth: int, config: ToolboxConfig):
        super().__init__()
        self.config = config
        self.depth = depth
        sizes = config.sizes(dim)
        builders = {
            "spatial": lambda: QueryValueLoRA(dim, sizes["lora_rank"], config.lora_alpha),
            "semantic": lambda: ParallelAdapter(dim, sizes["adapter_dim"], config.adapter_scale),
            "frequency": lambda: FrequencyAdapter(
                dim, sizes["frequency_dim"], config.frequency_cutoff, config.frequency_scale_init
            ),
        }
        self.slots = nn.ModuleDict(
            {t: nn.ModuleList(builders[t]() for _ in range(depth)) for t in SLOT_TYPES if t in config.types}
        )
        self.slot_names = [slot_name(t, i) for t in self.slots for i in range(depth)]
        self._draw_output_weights(config.up_init_std)
        self._active: set[str] = set()
        self.set_active(self.slot_names)

    @torch.no_grad()
    def _draw_output_weights(self, std: float) -> None:
        """Replace the zero output matrices by N(0, std²) draws; std 0 draws nothing (the RNG is untouched)."""
        if std == 0:
            return
        for name in self.slot_names:
            for weight in self.slot_module(name).output_weights():
                weight.normal_(0.0, std)

    def active_slots(self) -> list[str]:
        return [n for n in self.slot_names if n in self._active]

    def set_active(self, names: Iterable[str]) -> None:
        """Switch slots on (computed, trainable) or off (skipped, frozen). Cheap: flags only."""
        wanted = set(names)
        unknown = wanted - set(self.slot_names)
        if unknown:
            raise UserError(f"unknown slots {sorted(unknown)}")
        self._active = wanted
        for name in self.slot_names:
            self.slot_module(name).requires_grad_(name in wanted)

    def slot_module(self, name: str) -> nn.Module:
        slot_type, layer = parse_slot(name)
        if slot_type not in self.slots or layer >= self.depth:
            raise UserError(f"no slot {name!r} in this toolbox")
        return self.slots[slot_type][layer]

    def slot_parameters(self, name: str) -> list[nn.Parameter]:
        return list(self.slot_module(name).parameters())

    def module(self, slot_type: str, layer: int) -> nn.Module | None:
        """The slot's module when it is active, else None (the forward pass then skips it)."""
        if slot_name(slot_type, layer) in self._active:
            return self.slots[slot_type][layer]
        return None

    def lowest_active_layer(self) -> int | None:
        layers = [parse_slot(n)[1] for n in self._active]
        return min(layers) if layers else None

    def slot_param_counts(self) -> dict[str, int]:
        return {n: sum(p.numel() for p in self.slot_parameters(n)) for n in self.slot_names}

    def state_for(self, names: Iterable[str]) -> dict[str, Tensor]:
        """The state dict of the given slots only (for saving what a gated run actually trained)."""
        keep = tuple(f"slots.{n}." for n in names)
        return {k: v for k, v in self.state_dict().items() if k.startswith(keep)}


def check_attention_supported(block: nn.Module) -> None:
    """Spatial slots need timm's standard fused-qkv attention; say so instead of failing obscurely."""
    attn = getattr(block, "attn", None)
    needed = ("qkv", "num_heads", "head_dim", "q_norm", "k_norm", "proj")
    if attn is None or not all(hasattr(attn, a) for a in needed) or getattr(attn, "gate", None) is not None:
        raise UserError(f"spatial (LoRA) slots need a fused-qkv timm Attention, found {type(attn).__name__}")


def _attention_with_lora(attn: nn.Module, x: Tensor, lora: QueryValueLoRA) -> Tensor:
    """timm's Attention forward with the LoRA deltas added to the q and v slices of qkv."""
    b, n, _ = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim)
    dq, dv = lora(x)
    q = qkv[:, :, 0] + dq.reshape(b, n, attn.num_heads, attn.head_dim)
    k = qkv[:, :, 1]
    v = qkv[:, :, 2] + dv.reshape(b, n, attn.num_heads, attn.head_dim)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    q, k = attn.q_norm(q), attn.k_norm(k)
    dropout = attn.attn_drop.p if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    out = out.transpose(1, 2).reshape(b, n, -1)
    out = attn.norm(out) if hasattr(attn, "norm") else out
    return attn.proj_drop(attn.proj(out))


def run_block(
    block: nn.Module, x: Tensor, layer: int, grid: tuple[int, int], num_prefix: int, toolbox: Toolbox | None
) -> Tensor:
    """One timm ViT block with its active slots: LoRA in attention, adapter beside the MLP, EA after."""
    if toolbox is None:
        return block(x)
    lora = toolbox.module("spatial", layer)
    adapter = toolbox.module("semantic", layer)
    frequency = toolbox.module("frequency", layer)
    if lora is None and adapter is None and frequency is None:
        return block(x)
    normed = block.norm1(x)
    attn_out = block.attn(normed) if lora is None else _attention_with_lora(block.attn, normed, lora)
    x = x + block.drop_path1(block.ls1(attn_out))
    out = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    if adapter is not None:
        out = out + adapter(x)
    if frequency is not None:
        out = out + frequency(out, grid, num_prefix)
    return out
