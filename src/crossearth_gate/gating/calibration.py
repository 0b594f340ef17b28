"""Measure the cost model on this machine: time training steps of a few probe sets, fit costs.py's model.

The probes separate the unknowns: no slot (the fixed cost), one slot of the first type at the top,
middle and bottom block (how the cost grows with the depth backward reaches), every slot of one type
(that type's per-slot cost), and all slots. Each probe runs one untimed step (allocations, optimiser
state), then ``repeats`` timed rounds interleaved over the probes, so drift on a shared machine hits
every probe alike; the fastest round counts, since noise only ever adds time. The fit is exact at the
empty probe (the fixed term every set pays) and at the all-slots probe (the budget's unit), and shares
out the rest by least squares: one backward cost per block (the blocks of a ViT are identical) and one
cost per slot type, clipped at zero. The model's weights, gradients, active set, train/eval flags and the
RNG are left as found.

Under torch.distributed only rank 0 measures (or reads the cache) and broadcasts the result, so every
rank budgets with the same numbers and selects the same set.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..toolbox.slots import SLOT_TYPES, activated, parse_slot, slot_name
from ..util.atomic import atomic_write_json
from .costs import CostModel
from .fisher import PerSampleLoss, Switchboard

REPEATS = 4
"""Timed passes over the probes; each probe's fastest counts. Single steps on a shared 2-core CPU vary by
±2–5 % (the benchmark's per-step times), and a fraction near the floor inherits the empty and all-slots
probes' errors, so the minimum is taken over four passes rather than two (about 15 s more, once per run)."""


def probe_sets(slot_names: list[str]) -> list[list[str]]:
    """The active sets to time (see the module doc); every one of them is a real training configuration."""
    depth = 1 + max(parse_slot(n)[1] for n in slot_names)
    types = [t for t in SLOT_TYPES if any(parse_slot(n)[0] == t for n in slot_names)]
    probes: list[list[str]] = [[]]
    probes += [[slot_name(types[0], j)] for j in sorted({depth - 1, depth // 2, 0}, reverse=True)]
    probes += [[slot_name(t, i) for i in range(depth)] for t in types]
    if len(types) > 1:
        probes.append(list(slot_names))
    return probes


def fit_cost_model(probes: list[list[str]], seconds: list[float], type_params: dict[str, int],
                   depth: int) -> CostModel:
    """Least squares of step = fixed + b·(blocks from the lowest active one up) + Σ_types c_t·count_t, in
    relative errors, EXACT at the empty probe and at the probe with the most slots.

    Budgets are fractions of the all-on step, and the sets a tight budget admits sit near the empty set's
    floor, so a fraction's error there is the fixed term's and the all-on step's error. A plain fit traded
    both for the middle probes (on the 2-core CPU: fixed 0.557 s fitted where the empty probe measured
    0.563 s), which moved every predicted fraction near the floor. So the fixed term IS the measured empty
    step (what every set really pays) and the all-on prediction IS the measured all-on step; the per-block
    and per-type costs share out the rest by least squares of relative errors (each probe counts alike,
    however long its step). Costs are clipped at zero (the budgeted search needs non-negative ones).
    """
    types = list(type_params)
    rows = []
    for active in probes:
        layers = [parse_slot(n)[1] for n in active]
        counts = [sum(parse_slot(n)[0] == t for n in active) for t in types]
        rows.append([1.0, float(depth - min(layers)) if layers else 0.0, *map(float, counts)])
    a = torch.tensor(rows, dtype=torch.float64)
    y = torch.tensor(seconds, dtype=torch.float64)
    anchors = sorted({i for i, active in enumerate(probes) if not active}
                     | {max(range(len(probes)), key=lambda i: len(probes[i]))})
    w = 1.0 / y.clamp(min=1e-12)
    aw = a * w.unsqueeze(1)
    c = a[anchors]
    n, m = a.shape[1], len(anchors)
    kkt = torch.zeros(n + m, n + m, dtype=torch.float64)
    kkt[:n, :n], kkt[:n, n:], kkt[n:, :n] = aw.T @ aw, c.T, c
    rhs = torch.cat([aw.T @ (y * w), y[anchors]]).unsqueeze(1)
    x = torch.linalg.lstsq(kkt, rhs, driver="gelsd").solution.squeeze(1)[:n].clamp(min=0).tolist()
    return CostModel(x[0], (x[1],) * depth, dict(zip(types, x[2:], strict=True)), dict(type_params))


def type_param_counts(switchboard: Switchboard) -> dict[str, int]:
    """Parameters of one slot of each type (equal in every block of a ViT; checked)."""
    counts: dict[str, set[int]] = {}
    for name in switchboard.slot_names:
        n = sum(p.numel() for p in switchboard.slot_parameters(name))
        counts.setdefault(parse_slot(name)[0], set()).add(n)
    uneven = sorted(t for t, sizes in counts.items() if len(sizes) > 1)
    if uneven:
        raise ValueError(f"slots of type {uneven} differ in size between blocks: the cost model needs equal ones")
    return {t: sizes.pop() for t, sizes in counts.items()}


def calibrate(model: nn.Module, switchboard: Switchboard, images: Tensor, targets: Tensor,
              per_sample_loss: PerSampleLoss, repeats: int = REPEATS) -> CostModel:
    """Time training steps (forward, loss, backward, AdamW) of the probe sets on one batch; fit the model."""
    probes, best = time_probes(model, switchboard, images, targets, per_sample_loss, repeats)
    depth = 1 + max(parse_slot(n)[1] for n in switchboard.slot_names)
    return fit_cost_model(probes, best, type_param_counts(switchboard), depth)


def time_probes(model: nn.Module, switchboard: Switchboard, images: Tensor, targets: Tensor,
                per_sample_loss: PerSampleLoss, repeats: int = REPEATS) -> tuple[list[list[str]], list[float]]:
    """The probe sets and the fastest timed step of each (what ``calibrate`` fits)."""
    probes = probe_sets(switchboard.slot_names)
    best = [float("inf")] * len(probes)
    with _undisturbed(model, switchboard, images.device):
        optimizers = []
        for active in probes:
            switchboard.set_active(active)
            optimizers.append(torch.optim.AdamW([p for p in model.parameters() if p.requires_grad]))
        for round_ in range(repeats + 1):
            for i, (active, optimizer) in enumerate(zip(probes, optimizers, strict=True)):
                switchboard.set_active(active)
                seconds = _timed_step(model, optimizer, images, targets, per_sample_loss)
                if round_ > 0:
                    best[i] = min(best[i], seconds)
    return probes, best


def _timed_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, targets: Tensor,
                per_sample_loss: PerSampleLoss) -> float:
    _sync(images.device)
    start = time.perf_counter()
    per_sample_loss(model(images), targets).mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    _sync(images.device)
    return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _undisturbed(model: nn.Module, switchboard: Switchboard, device: torch.device) -> Iterator[None]:
    """Train mode for timing; weights, buffers, gradients, active set, modes and RNG restored afterwards."""
    slot_params = {p for name in switchboard.slot_names for p in switchboard.slot_parameters(name)}
    params = [p for p in model.parameters() if p.requires_grad or p in slot_params]
    saved = [(p, p.detach().clone(), p.grad) for p in params]
    buffers = [(b, b.clone()) for b in model.buffers()]
    modes = [(m, m.training) for m in model.modules()]
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with activated(switchboard, switchboard.active_slots()), torch.random.fork_rng(devices=devices), \
                torch.enable_grad():
            model.train()
            yield
    finally:
        with torch.no_grad():
            for p, value, grad in saved:
                p.copy_(value)
                p.grad = grad
            for b, value in buffers:
                b.copy_(value)
        for m, training in modes:
            m.training = training


def load_or_measure(path: Path | None, key: dict[str, Any], measure: Callable[[], CostModel]) -> CostModel:
    """The cost model cached at ``path`` when it was measured for the same ``key``; else measure and cache it."""
    if path is not None and path.is_file():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("key") == key:
            return CostModel.from_dict(cached["cost_model"])
    cost = measure()
    if path is not None:
        atomic_write_json(path, {"key": key, "cost_model": cost.to_dict()})
    return cost


def shared(compute: Callable[[], CostModel]) -> CostModel:
    """``compute()`` on rank 0, broadcast to every rank (just ``compute()`` without torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return compute()
    payload = [compute().to_dict() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(payload, src=0)
    return CostModel.from_dict(payload[0])


def measured_cost_model(model: nn.Module, switchboard: Switchboard, images: Tensor, targets: Tensor,
                        per_sample_loss: PerSampleLoss, cache: Path | None) -> CostModel:
    """The start-up calibration as a run uses it: cached in ``cache`` (reused on resume), same on every rank."""
    key = {
        "slots": list(switchboard.slot_names),
        "type_params": type_param_counts(switchboard),
        "batch": list(images.shape),
        "device": images.device.type,
    }
    measure = partial(calibrate, model, switchboard, images, targets, per_sample_loss)
    return shared(partial(load_or_measure, cache, key, measure))
