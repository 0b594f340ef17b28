"""A training loader that can stop mid-epoch and continue exactly where it was (for killed runs).

The samplers draw the same orders as the ones they replace (``RandomSampler`` with the loader's
generator; under DDP, ``DistributedSampler`` seeded with the run seed, as Lightning would build it),
so an uninterrupted run sees the same batches as before. The loader counts the batches it handed
out; Lightning's fit loop saves ``state_dict`` in the checkpoint and calls ``load_state_dict``
before the first ``iter()`` of a resumed run, which then skips the batches already trained on
without loading them (loading would consume augmentation randomness).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler


class _Resumable:
    """Where the next ``__iter__`` starts: a generator state to restore first and indices to skip."""

    def __init__(self) -> None:
        self.skip = 0
        self.generator_state: torch.Tensor | None = None
        self.epoch_generator_state: torch.Tensor | None = None  # generator state when this epoch's order was drawn

    def resume_at(self, skip: int, generator_state: torch.Tensor | None) -> None:
        self.skip, self.generator_state = skip, generator_state


class ResumableRandomSampler(_Resumable, Sampler[int]):
    """``RandomSampler(dataset, generator=g)``'s orders (one ``randperm`` per epoch, and the next one drawn
    when asked past the end, as it does), restartable at any position of an epoch."""

    def __init__(self, size: int, generator: torch.Generator):
        _Resumable.__init__(self)
        self.size, self.generator = size, generator

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        if self.generator_state is not None:
            self.generator.set_state(self.generator_state)
        skip, self.skip, self.generator_state = self.skip, 0, None
        self.epoch_generator_state = self.generator.get_state()
        yield from torch.randperm(self.size, generator=self.generator).tolist()[skip:]
        yield from torch.randperm(self.size, generator=self.generator).tolist()[:0]


class ResumableDistributedSampler(_Resumable, DistributedSampler):
    """``DistributedSampler``: its order is a function of (seed, epoch), so only the position is restored."""

    def __init__(self, dataset: Dataset, seed: int):
        _Resumable.__init__(self)
        DistributedSampler.__init__(self, dataset, shuffle=True, seed=seed)

    def __iter__(self) -> Iterator[int]:
        skip, self.skip, self.generator_state = self.skip, 0, None
        return iter(list(DistributedSampler.__iter__(self))[skip:])


class ResumableLoader(DataLoader):
    """A DataLoader with Lightning's stateful-iterable interface: the batches served in this epoch."""

    def __init__(self, dataset: Dataset, sampler: ResumableRandomSampler | ResumableDistributedSampler,
                 **kwargs: Any):
        super().__init__(dataset, sampler=sampler, **kwargs)
        self.served = 0
        self._resuming = False

    def __iter__(self) -> Iterator[Any]:
        if not self._resuming:
            self.served = 0
        self._resuming = False
        for batch in super().__iter__():
            self.served += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        sampler = self.sampler
        assert isinstance(sampler, _Resumable)
        generator = getattr(sampler, "generator", None)
        return {
            "served": self.served,
            "length": len(self),
            "epoch_generator": sampler.epoch_generator_state,
            "generator": generator.get_state() if isinstance(generator, torch.Generator) else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Mid-epoch: draw this epoch's order again and skip what was served; at an epoch's end: go on."""
        sampler = self.sampler
        assert isinstance(sampler, _Resumable)
        served = int(state["served"])
        if 0 < served < int(state["length"]):
            sampler.resume_at(served * self.batch_size, state["epoch_generator"])
            self.served, self._resuming = served, True
        elif isinstance(sampler, ResumableRandomSampler) and state["generator"] is not None:
            sampler.generator.set_state(state["generator"])
