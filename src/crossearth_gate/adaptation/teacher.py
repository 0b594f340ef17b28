"""The EMA teacher: averaged copies of what trains (head + slots), run over the student's shared backbone.

Only trainable tensors are copied; a forward with the teacher is ``functional_call`` on the student
module with the teacher's tensors swapped in, so the frozen backbone (the bulk of the model) exists
once. Every slot is averaged, active or not: an inactive slot's weights are frozen, so its average
converges to them and the teacher agrees with the gate whenever a slot is switched back on. The
teacher runs with the student's current active set (it mirrors the student's architecture).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.func import functional_call


def teacher_names(model: nn.Module) -> list[str]:
    """Parameter names the teacher averages: everything except a frozen backbone (whatever trains in it, e.g.
    new bands' kernels, is averaged too)."""
    backbone = getattr(model, "backbone", None)
    finetune = bool(getattr(backbone, "finetune", False))
    return [n for n, p in model.named_parameters() if finetune or p.requires_grad or not n.startswith("backbone.")]


def _key(name: str) -> str:
    return name.replace(".", "__")  # buffer names cannot hold dots


class EMATeacher(nn.Module):
    """θ_t ← α_k·θ_t + (1 − α_k)·θ_s with α_k = min(1 − 1/(k + 1), α) at the k-th update (DACS's warm start).

    The copies are buffers, so they travel in the task's state dict (checkpoints, resume).
    """

    def __init__(self, student: nn.Module, alpha: float):
        super().__init__()
        if not 0 <= alpha < 1:
            raise ValueError(f"ema_alpha must be in [0, 1), got {alpha}")
        self.alpha = alpha
        self.names = teacher_names(student)
        params = dict(student.named_parameters())
        for name in self.names:
            self.register_buffer(_key(name), params[name].detach().clone())
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def tensors(self) -> dict[str, Tensor]:
        """The teacher's tensors under the student's parameter names (what ``functional_call`` takes)."""
        return {name: getattr(self, _key(name)) for name in self.names}

    def current_alpha(self) -> float:
        return min(1.0 - 1.0 / (int(self.updates) + 1), self.alpha)

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """One EMA step after an optimiser step of the student."""
        alpha = self.current_alpha()
        params = dict(student.named_parameters())
        for name, mine in self.tensors().items():
            mine.mul_(alpha).add_(params[name].detach().to(mine.dtype), alpha=1.0 - alpha)
        self.updates += 1

    @torch.no_grad()
    def predict(self, student: nn.Module, images: Tensor) -> Tensor:
        """Teacher logits: the student module, eval mode, no gradient, the teacher's weights."""
        with _eval_mode(student):
            return functional_call(student, self.tensors(), (images,), strict=False)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, training in modes:
            m.training = training
