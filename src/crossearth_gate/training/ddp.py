"""DDP that averages every slot that can ever train, whatever the active set when the model is wrapped.

DistributedDataParallel registers only the parameters that need grad when it wraps the model; a
slot switched off at that moment (e.g. the active set a resumed run takes from its checkpoint) would
later train unsynchronised on each rank. So every slot is registered, then the flags are put back;
unused slots are DDP's ``find_unused_parameters`` case (their grads stay None, so AdamW skips them).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from lightning.pytorch.strategies import DDPStrategy, Strategy
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..toolbox.slots import Toolbox

START_METHODS = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}


@contextmanager
def every_slot_needing_grad(model: nn.Module) -> Iterator[None]:
    toolboxes = [m for m in model.modules() if isinstance(m, Toolbox)]
    params = [p for tb in toolboxes for name in tb.slot_names for p in tb.slot_parameters(name)]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


class SlotAwareDDPStrategy(DDPStrategy):
    def _setup_model(self, model: nn.Module) -> DistributedDataParallel:
        with every_slot_needing_grad(model):
            return super()._setup_model(model)


def slot_aware_strategy(name: str) -> str | Strategy:
    """The Lightning strategy for ``train.strategy``: DDP variants become the slot-aware DDP."""
    base = name.removesuffix("_find_unused_parameters_true").removesuffix("_find_unused_parameters_false")
    if base not in START_METHODS:
        return name
    return SlotAwareDDPStrategy(start_method=START_METHODS[base], find_unused_parameters=True)
