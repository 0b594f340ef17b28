"""Under torch.distributed every rank must select the same slots, scored over all ranks' samples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from crossearth_gate.gating import FisherSelector, Gate, GateSchedule, GradNormSelector, Selection
from support.slotnet import TinySlotNet, batched, make_data, per_sample_ce

pytestmark = pytest.mark.ddp

WORLD = 2
SAMPLES = 5  # per rank
SELECTORS = {"fisher": FisherSelector(), "gradnorm": GradNormSelector()}


def rank_data(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    return make_data(SAMPLES, seed=100 + rank)


def select(name: str, batches) -> Selection:
    torch.manual_seed(0)  # same weights on every rank, as DDP guarantees
    model = TinySlotNet()
    gate = Gate(model, SELECTORS[name], 3, GateSchedule(every=1), SAMPLES)
    selection = gate.maybe_select(0, model, batches, per_sample_ce)
    assert selection is not None and model.active_slots() == selection.active
    return selection


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        x, y = rank_data(rank)
        results = {name: select(name, batched(x, y, 2)) for name in SELECTORS}
        torch.save({n: (s.raw, s.normalized, s.active) for n, s in results.items()}, f"{out_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", list(SELECTORS))
def test_ranks_agree_and_match_single_process_on_union(name: str, ranks_output: Path):
    per_rank = [torch.load(ranks_output / f"{r}.pt")[name] for r in range(WORLD)]
    assert per_rank[0] == per_rank[1]  # bit-identical raw, normalized and active on every rank

    data = [rank_data(r) for r in range(WORLD)]
    union = (torch.cat([x for x, _ in data]), torch.cat([y for _, y in data]))
    torch.manual_seed(0)
    model = TinySlotNet()
    single = SELECTORS[name].select(model, model, [union], per_sample_ce, WORLD * SAMPLES, 3, 0)
    raw, normalized, active = per_rank[0]
    assert active == single.active
    for got, want in ((raw, single.raw), (normalized, single.normalized)):
        assert got.keys() == want.keys()
        for slot in want:
            assert got[slot] == pytest.approx(want[slot], rel=1e-6, abs=1e-12), slot


@pytest.fixture(scope="module")
def ranks_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run both ranks once for the module (each on its own data); their results land in this folder."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(out / "init"), str(out)), nprocs=WORLD, join=True)
    return out
