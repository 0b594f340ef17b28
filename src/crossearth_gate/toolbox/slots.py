"""Slots: one module of each type in every block, switchable on/off, plus the slot-aware block forward.

A *slot* is (type, layer), named ``"<type>.<layer>"``. An inactive slot is skipped in the forward pass
(its module is never called) and its parameters have ``requires_grad=False``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from ..util.checks import at_least, finite, in_unit_interval, positive
from ..util.errors import UserError
from .adapter import ParallelAdapter
from .frequency import FrequencyAdapter
from .lora import LoRAQKV, QueryValueLoRA, wrap_qkv
from .names import SLOT_TYPES, SlotType, parse_slot, slot_name


class Switchboard(Protocol):
    """What the gate needs from a model with slots (the toolbox is one)."""

    slot_names: list[str]

    def active_slots(self) -> list[str]: ...

    def set_active(self, names: Iterable[str]) -> None: ...

    def slot_parameters(self, name: str) -> list[nn.Parameter]: ...


@dataclass
class ToolboxConfig:
    """Which module types get slots and how big they are; ``None`` sizes scale with the backbone width."""

    types: tuple[SlotType, ...] = SLOT_TYPES
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
            raise UserError(f"config toolbox.types: unknown module types {unknown}; choose from {list(SLOT_TYPES)}")
        for key in ("lora_rank", "adapter_dim", "frequency_dim"):
            at_least(getattr(self, key), 1, f"toolbox.{key}")
        positive(self.lora_alpha, "toolbox.lora_alpha")
        in_unit_interval(self.frequency_cutoff, "toolbox.frequency_cutoff", open_low=True)
        finite(self.adapter_scale, "toolbox.adapter_scale")
        finite(self.frequency_scale_init, "toolbox.frequency_scale_init")
        at_least(self.up_init_std, 0, "toolbox.up_init_std")

    def sizes(self, dim: int) -> dict[str, int]:
        return {
            "lora_rank": self.lora_rank or max(1, dim // 16),
            "adapter_dim": self.adapter_dim or max(1, dim // 16),
            "frequency_dim": self.frequency_dim or max(1, dim // 32),
        }


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

    def attach(self, blocks: Iterable[nn.Module]) -> None:
        """Wrap each block's ``attn.qkv`` around its spatial slot; check that the adapter has a ``norm2`` to read.

        Nothing else in the blocks changes: their own forward runs, with the slots switched in by ``run_block``.
        """
        blocks = list(blocks)
        if len(blocks) != self.depth:
            raise UserError(f"the toolbox has {self.depth} layers but the backbone {len(blocks)} blocks")
        for layer, block in enumerate(blocks):
            if "spatial" in self.slots:
                wrap_qkv(getattr(block, "attn", None), self.slots["spatial"][layer])
            if "semantic" in self.slots and not isinstance(getattr(block, "norm2", None), nn.Module):
                raise UserError(f"semantic (adapter) slots need a block with norm2 before its MLP, found "
                                f"{type(block).__name__}")

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


@contextmanager
def activated(switchboard: Switchboard, names: Iterable[str]) -> Iterator[None]:
    """Another active set for the duration of the block; the previous set and every slot's flag come back.

    The gate scores with every slot on, DA's teacher predicts with its own set, benchmarks merge a
    selection: each restores both the active set and the ``requires_grad`` flags it found (which the
    caller may have set differently from what ``set_active`` would), also when the block fails.
    """
    previous = list(switchboard.active_slots())
    flags = [(p, p.requires_grad) for n in switchboard.slot_names for p in switchboard.slot_parameters(n)]
    switchboard.set_active(names)
    try:
        yield
    finally:
        switchboard.set_active(previous)
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def _lora_on(block: nn.Module, lora: QueryValueLoRA) -> Iterator[None]:
    """Switch the block's qkv wrapper on for one call (``backbone(x, None)`` must stay the bare model)."""
    qkv = getattr(getattr(block, "attn", None), "qkv", None)
    if not isinstance(qkv, LoRAQKV) or qkv.lora is not lora:
        raise RuntimeError("the toolbox is not attached to this block: call Toolbox.attach(blocks) first")
    qkv.enabled = True
    try:
        yield
    finally:
        qkv.enabled = False


@contextmanager
def _input_of(module: nn.Module) -> Iterator[list[Tensor]]:
    """Collect what ``module`` is called with: the block's post-attention state T̂ is ``norm2``'s input."""
    seen: list[Tensor] = []
    handle = module.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    try:
        yield seen
    finally:
        handle.remove()


def run_block(
    block: nn.Module, x: Tensor, layer: int, grid: tuple[int, int], num_prefix: int, toolbox: Toolbox | None
) -> Tensor:
    """One ViT block, its own forward, with its active slots: LoRA in qkv, adapter beside the MLP, EA after.

    Tokens are (B, N, C) with ``num_prefix`` class/register tokens first, or a (B, h, w, C) grid (SAM).
    The adapter reads T̂ where the block's MLP branch reads it (the input of ``norm2``) and adds outside
    the block's LayerScale: T̂ + LS(MLP(norm2(T̂))) + Adapter(T̂) == block(x) + Adapter(T̂).
    """
    if toolbox is None:
        return block(x)
    lora = toolbox.module("spatial", layer)
    adapter = toolbox.module("semantic", layer)
    frequency = toolbox.module("frequency", layer)
    with ExitStack() as stack:
        if lora is not None:
            stack.enter_context(_lora_on(block, lora))
        seen = stack.enter_context(_input_of(block.norm2)) if adapter is not None else []
        out = block(x)
    if adapter is not None:
        if len(seen) != 1:
            raise RuntimeError(f"block {layer} called norm2 {len(seen)} times: cannot place the adapter")
        out = out + adapter(seen[0]).reshape(out.shape)
    if frequency is not None:
        out = out + frequency(out.flatten(1, -2), grid, num_prefix).reshape(out.shape)
    return out
