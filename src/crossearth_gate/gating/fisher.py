"""Per-slot scores from per-sample gradients: the empirical diagonal Fisher (and a plain gradient norm).

F̂_θ = (1/M) Σ_j g_j², with g_j = ∂ loss_j / ∂θ for ONE image j (the sign of log p = −loss does not
matter once squared). A slot's score is F̂ summed over its parameters. Squaring the gradient of a
batch mean would give (E g)², a different and wrong quantity, so gradients are taken per sample:

* ``method="loop"`` (default): one forward/backward per image, ``torch.autograd.grad`` on the slot
  parameters only. Nothing is written to ``.grad``, so optimiser state and pending gradients are
  untouched.
* ``method="vmap"``: ``torch.func.grad`` of a one-image loss through ``functional_call``,
  vectorised over the batch with ``vmap``. Same numbers, fewer Python round trips; it needs a
  model whose forward ``vmap`` supports.

While scoring, every slot is active and trainable and the model is in eval mode (dropout would add
noise to the scores); the previous active set, ``requires_grad`` flags and train/eval flags are
restored afterwards, also when scoring fails. Under ``torch.distributed`` the per-slot sums and
the sample count are all-reduced, so every rank gets identical scores over all ranks' samples.
Pass the plain module, not a DistributedDataParallel wrapper (its hooks expect a real backward).
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ..toolbox.slots import Switchboard, activated
from ..util.errors import UserError

Batches = Iterable[tuple[Tensor, Tensor]]
PerSampleLoss = Callable[[Tensor, Tensor], Tensor]
"""``loss(logits, target) -> Tensor`` of shape (B,): one loss per image."""

FisherMethod = Literal["loop", "vmap"]  # per-sample gradients: one backward per image, or torch.func.vmap
FISHER_METHODS: tuple[FisherMethod, ...] = typing.get_args(FisherMethod)


@dataclass(frozen=True)
class SlotStats:
    """Per-slot totals over ``count`` samples of all ranks: Σ_j Σ_θ g² (Fisher) or ‖Σ_j g‖ (grad norm)."""

    sums: dict[str, float]
    count: int

    @property
    def raw(self) -> dict[str, float]:
        """The per-sample mean: F̂ summed over the slot's parameters (or ‖mean g‖ for grad norms)."""
        return {name: total / self.count for name, total in self.sums.items()}


def check_method(method: str) -> None:
    if method not in FISHER_METHODS:
        raise UserError(f"unknown Fisher method {method!r}; choose one of {list(FISHER_METHODS)}")


def slot_fisher(
    model: nn.Module,
    switchboard: Switchboard,
    batches: Batches,
    per_sample_loss: PerSampleLoss,
    num_samples: int,
    method: str = "loop",
) -> SlotStats:
    """Empirical diagonal Fisher per slot from ``num_samples`` images (per rank) of ``batches``."""
    check_method(method)
    _check_num_samples(num_samples)
    with _all_slots_scoring(model, switchboard):
        params, owner = _slot_params(switchboard)
        sums = torch.zeros(len(switchboard.slot_names), dtype=torch.float64, device=_device(params))
        count = 0
        chunks = _chunks(batches, num_samples, sums.device)
        gradients = _vmap_grads if method == "vmap" else _loop_grads
        for grads, n in gradients(model, params, chunks, per_sample_loss):
            for index, g in zip(owner, grads, strict=True):
                if g is not None:
                    sums[index] += g.double().pow(2).sum()
            count += n
        totals, count = _all_reduce(sums, count)
    return _stats(switchboard.slot_names, totals.tolist(), count)


def slot_gradnorm(
    model: nn.Module,
    switchboard: Switchboard,
    batches: Batches,
    per_sample_loss: PerSampleLoss,
    num_samples: int,
) -> SlotStats:
    """Plain gradient-norm score per slot, ‖mean over samples of g‖₂ (the ablation's baseline).

    The summed gradient needs no per-sample split, so each batch is one forward/backward of the
    summed per-sample losses. ``sums`` holds ‖Σ g‖, ``raw`` = ‖Σ g‖ / count.
    """
    _check_num_samples(num_samples)
    with _all_slots_scoring(model, switchboard):
        params, owner = _slot_params(switchboard)
        device = _device(params)
        totals = [torch.zeros(p.shape, dtype=torch.float64, device=device) for p in params]
        count = 0
        for x, y in _chunks(batches, num_samples, device):
            loss = _checked_loss(per_sample_loss(model(x), y), x.shape[0])
            for total, g in zip(totals, _grads(loss, params), strict=True):
                if g is not None:
                    total += g.double()
            count += x.shape[0]
        flat = torch.cat([torch.zeros(0, dtype=torch.float64, device=device)] + [t.flatten() for t in totals])
        flat, count = _all_reduce(flat, count)
        squares = torch.zeros(len(switchboard.slot_names), dtype=torch.float64, device=device)
        for index, piece in zip(owner, flat.split([p.numel() for p in params]), strict=True):
            squares[index] += piece.pow(2).sum()
    return _stats(switchboard.slot_names, squares.sqrt().tolist(), count)


@contextmanager
def _all_slots_scoring(model: nn.Module, switchboard: Switchboard) -> Iterator[None]:
    """All slots on and trainable, eval mode, grad enabled; everything restored on exit."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        with activated(switchboard, switchboard.slot_names):
            for name in switchboard.slot_names:
                for p in switchboard.slot_parameters(name):
                    p.requires_grad_(True)
            model.eval()
            with torch.enable_grad():
                yield
    finally:
        for m, training in modes:
            m.training = training


def _slot_params(switchboard: Switchboard) -> tuple[list[nn.Parameter], list[int]]:
    """Flat list of slot parameters with the index of the slot each belongs to."""
    params: list[nn.Parameter] = []
    owner: list[int] = []
    for index, name in enumerate(switchboard.slot_names):
        for p in switchboard.slot_parameters(name):
            params.append(p)
            owner.append(index)
    return params, owner


def _device(params: list[nn.Parameter]) -> torch.device:
    return params[0].device if params else torch.device("cpu")


def _check_num_samples(num_samples: int) -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise UserError(f"the number of Fisher samples must be an integer >= 1, got {num_samples!r}")


def _chunks(batches: Batches, num_samples: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """Images from the batches until ``num_samples`` are used; never pulls a batch it does not need."""
    left = num_samples
    for x, y in batches:
        take = min(left, x.shape[0])
        yield x[:take].to(device), y[:take].to(device)
        left -= take
        if left == 0:
            return


def _checked_loss(loss: Tensor, n: int) -> Tensor:
    if loss.shape != (n,):
        raise ValueError(f"per_sample_loss must return shape ({n},), one loss per image: {tuple(loss.shape)}")
    return loss


def _grads(loss: Tensor, params: list[nn.Parameter]) -> list[Tensor | None]:
    """d(sum of loss)/d(params) without touching ``.grad``; None where a parameter is unused."""
    if not loss.requires_grad:
        return [None] * len(params)
    return list(torch.autograd.grad(loss.sum(), params, allow_unused=True))


def _loop_grads(
    model: nn.Module,
    params: list[nn.Parameter],
    chunks: Iterator[tuple[Tensor, Tensor]],
    per_sample_loss: PerSampleLoss,
) -> Iterator[tuple[list[Tensor | None], int]]:
    """One forward/backward per image: the gradients of a single sample each time."""
    for x, y in chunks:
        for i in range(x.shape[0]):
            loss = _checked_loss(per_sample_loss(model(x[i : i + 1]), y[i : i + 1]), 1)
            yield _grads(loss, params), 1


def _vmap_grads(
    model: nn.Module,
    params: list[nn.Parameter],
    chunks: Iterator[tuple[Tensor, Tensor]],
    per_sample_loss: PerSampleLoss,
) -> Iterator[tuple[list[Tensor | None], int]]:
    """Per-sample gradients of a whole chunk at once (leading dim = sample), via torch.func."""
    keys = _parameter_keys(model, params)

    def one_sample_loss(weights: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(model, weights, (x.unsqueeze(0),))
        return _checked_loss(per_sample_loss(logits, y.unsqueeze(0)), 1).sum()

    per_sample = vmap(grad(one_sample_loss), in_dims=(None, 0, 0))
    weights = {key: p.detach() for key, p in zip(keys, params, strict=True)}
    for x, y in chunks:
        with torch.no_grad():  # torch.func.grad ignores it; it stops graphs on other trainable params
            g = per_sample(weights, x, y)
        yield [g[key] for key in keys], x.shape[0]


def _parameter_keys(model: nn.Module, params: list[nn.Parameter]) -> list[str]:
    """The model's name for each slot parameter (functional_call addresses parameters by name)."""
    by_id = {id(p): key for key, p in model.named_parameters()}
    if any(id(p) not in by_id for p in params):
        raise ValueError("method='vmap' needs the slot parameters to belong to the scored model")
    return [by_id[id(p)] for p in params]


def _all_reduce(values: Tensor, count: int) -> tuple[Tensor, int]:
    """Sum values and count over ranks (no-op without torch.distributed); one collective call."""
    if not (dist.is_available() and dist.is_initialized()):
        return values, count
    packed = torch.cat([values.double(), torch.tensor([count], dtype=torch.float64, device=values.device)])
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    return packed[:-1], int(round(packed[-1].item()))


def _stats(slot_names: list[str], sums: list[float], count: int) -> SlotStats:
    if count == 0:
        raise UserError("no samples to score the slots with: the Fisher batches are empty")
    return SlotStats(dict(zip(slot_names, sums, strict=True)), count)
