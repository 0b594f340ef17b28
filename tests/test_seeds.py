"""derive_seed names the seed salts the code used before it; every call site must keep its exact value.

The expected values are the old arithmetic written out by hand, so a changed stride or a call site that
picks the wrong stream fails here (and would silently change every run's numbers otherwise).
"""

from types import SimpleNamespace

import pytest
import torch

from crossearth_gate.training.adaptation import DACSTask, TargetStream
from crossearth_gate.training.gate_callback import GateCallback
from crossearth_gate.util.seeds import derive_seed

CASES = [(0, 0, 0), (3, 2, 1), (12345, 7, 3)]  # (base, index, rank)


@pytest.mark.parametrize(("base", "index", "rank"), CASES)
def test_streams_keep_the_old_salts(base: int, index: int, rank: int) -> None:
    assert derive_seed(base, "fisher_samples", index=index, rank=rank) == base + 7919 * index + 104729 * rank
    assert derive_seed(base, "target_stream") == base + 7
    assert derive_seed(base, "target_order", index=index) == base + 7919 * index
    assert derive_seed(base, "target_crops", rank=rank) == base + 1_000_003 * rank
    assert derive_seed(base, "classmix", rank=rank) == base + 104723 + 1_000_003 * rank


class _Images(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 11

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": torch.full((3, 2, 2), float(i))}


@pytest.mark.parametrize("rank", [0, 2])
def test_target_stream_crops_and_order(rank: int) -> None:
    stream = TargetStream(_Images(), seed=40)
    stream.shard(rank, 3)
    assert torch.equal(stream.rng_state, torch.Generator().manual_seed(40 + 1_000_003 * rank).get_state())
    stream.epoch = 5
    expected = torch.randperm(11, generator=torch.Generator().manual_seed(40 + 7919 * 5))
    assert torch.equal(stream._order(), expected)


@pytest.mark.parametrize("rank", [0, 1])
def test_dacs_task_stream_and_classmix_seeds(rank: int) -> None:
    task = SimpleNamespace(cfg=SimpleNamespace(train=SimpleNamespace(seed=9)), stream=None,
                           mix_rng=torch.Generator(), _saved_ranks=None)
    DACSTask.attach(task, _Images())  # type: ignore[arg-type]
    assert task.stream.seed == 9 + 7
    DACSTask.start_streams(task, rank, 2)  # type: ignore[arg-type]
    assert torch.equal(task.mix_rng.get_state(),
                       torch.Generator().manual_seed(9 + 104723 + 1_000_003 * rank).get_state())


def test_gate_fisher_samples_seed() -> None:
    seen: list[int] = []
    fisher_data = SimpleNamespace(batches=lambda n, seed, device: seen.append(seed) or iter(()))
    callback = SimpleNamespace(seed=21, gate=SimpleNamespace(history=[None, None, None]),
                               fisher_data=fisher_data, num_samples=4)
    list(GateCallback._batches(callback, torch.device("cpu"), 2))  # type: ignore[arg-type]
    assert seen == [21 + 7919 * 3 + 104729 * 2]
