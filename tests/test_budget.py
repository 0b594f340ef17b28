"""The compute-aware gate: budgeted selection against brute force over all subsets, ties, errors, the
cost model's fit and calibration on a tiny ViT, its cache, and the budget fields of gates.json."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from crossearth_gate.config.schema import load_config
from crossearth_gate.gating import (
    Budget,
    BudgetedSelector,
    CostModel,
    FisherSelector,
    Gate,
    GateSchedule,
    RandomSelector,
    budgeted_top_k,
    calibrate,
    top_k,
)
from crossearth_gate.gating.calibration import fit_cost_model, load_or_measure, probe_sets, shared, type_param_counts
from crossearth_gate.heads.losses import per_sample_cross_entropy
from crossearth_gate.model.segmentor import Segmentor
from crossearth_gate.toolbox.slots import SLOT_TYPES, ToolboxConfig
from crossearth_gate.util.errors import UserError
from support.cli import fit_demo
from support.models import images, tiny_backbone
from support.slotnet import TinySlotNet, make_data, per_sample_ce


def names(depth: int, types: tuple[str, ...] = SLOT_TYPES) -> list[str]:
    return [f"{t}.{i}" for t in types for i in range(depth)]


def brute_force(scores: dict[str, float], k: int, cost: CostModel, budget: Budget) -> list[str] | None:
    """Every subset of 1..k slots; the best feasible by total score, ties to the best-ranked slots (top-k order)."""
    order = sorted(scores, key=lambda n: (-scores[n], SLOT_TYPES.index(n.split(".")[0]), int(n.split(".")[1])))
    best, best_key = None, None
    for size in range(1, k + 1):
        for subset in itertools.combinations(order, size):
            layers = [int(n.split(".")[1]) for n in subset]
            if budget.lowest_block is not None and min(layers) < budget.lowest_block:
                continue
            if budget.max_params is not None and cost.params(subset) > budget.max_params:
                continue
            if budget.step_fraction is not None and cost.step_s(subset) > budget.step_fraction * cost.all_on_s:
                continue
            ranks = sorted(order.index(n) for n in subset) + [math.inf] * (k - size)
            key = (-math.fsum(scores[n] for n in subset), *ranks)
            if best_key is None or key < best_key:
                best, best_key = subset, key
    if best is None:
        return None
    return sorted(best, key=lambda n: (SLOT_TYPES.index(n.split(".")[0]), int(n.split(".")[1])))


def random_cost(rng: random.Random, depth: int, types: tuple[str, ...]) -> CostModel:
    """Per-block costs that differ between blocks (more general than calibration produces)."""
    return CostModel(
        fixed_s=rng.choice([0.125, rng.uniform(0.01, 1)]),
        block_s=tuple(rng.choice([0.0, 0.1, rng.uniform(0, 0.5)]) for _ in range(depth)),
        type_s={t: rng.choice([0.0, 0.05, rng.uniform(0, 0.3)]) for t in types},
        type_params={t: rng.choice([10, 20, rng.randint(1, 50)]) for t in types},
    )


def random_budget(rng: random.Random, depth: int) -> Budget:
    while True:
        budget = Budget(
            step_fraction=rng.choice([None, 1.0, round(rng.uniform(0.3, 1.0), 2)]),
            lowest_block=rng.choice([None, 0, rng.randrange(depth)]),
            max_params=rng.choice([None, rng.randint(10, 150)]),
        )
        if budget.is_set:
            return budget


def check_against_brute_force(scores: dict[str, float], k: int, cost: CostModel, budget: Budget) -> None:
    expected = brute_force(scores, k, cost, budget)
    if expected is None:
        with pytest.raises(UserError, match="admits no slot|leaves no slot"):
            budgeted_top_k(scores, k, cost, budget)
    else:
        assert budgeted_top_k(scores, k, cost, budget) == expected, (scores, k, cost, budget)


@pytest.mark.parametrize("seed", range(8))
def test_budgeted_selection_equals_brute_force_on_random_instances(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(60):
        depth = rng.choice([2, 3])
        types = rng.choice([SLOT_TYPES, SLOT_TYPES[:2], ("semantic",)])
        slots = names(depth, types)
        ties = rng.random() < 0.5  # a few distinct values make ties common
        scores = {n: rng.choice([0.0, 0.25, 0.5]) if ties else rng.random() for n in slots}
        k = rng.randint(1, len(slots))
        check_against_brute_force(scores, k, random_cost(rng, depth, types), random_budget(rng, depth))


def test_budgeted_selection_equals_brute_force_for_every_score_pattern_of_two_blocks() -> None:
    slots = names(2)
    cost = CostModel(0.2, (0.3, 0.1), {"spatial": 0.05, "semantic": 0.02, "frequency": 0.1},
                     {"spatial": 30, "semantic": 20, "frequency": 40})
    budgets = [Budget(step_fraction=0.55), Budget(lowest_block=1, max_params=60)]
    for values in itertools.product((0.0, 1.0, 2.0), repeat=len(slots)):
        scores = dict(zip(slots, values, strict=True))
        for budget, k in itertools.product(budgets, (2, 4)):
            check_against_brute_force(scores, k, cost, budget)


def test_a_non_binding_budget_gives_the_plain_top_k() -> None:
    rng = random.Random(0)
    for _ in range(50):
        scores = {n: rng.choice([0.0, 0.1, 0.2, rng.random()]) for n in names(3)}
        cost = random_cost(rng, 3, SLOT_TYPES)
        k = rng.randint(1, 9)
        assert budgeted_top_k(scores, k, cost, Budget(step_fraction=1.0)) == top_k(scores, k)


def test_ties_are_deterministic_and_follow_the_canonical_order() -> None:
    cost = CostModel(0.0, (1.0, 1.0), dict.fromkeys(SLOT_TYPES, 0.0), dict.fromkeys(SLOT_TYPES, 1))
    scores = dict.fromkeys(names(2), 0.5)
    # equal scores: type order (spatial, semantic, frequency), then the lower layer — within the budget
    assert budgeted_top_k(scores, 2, cost, Budget(lowest_block=1)) == ["spatial.1", "semantic.1"]
    assert budgeted_top_k(scores, 2, cost, Budget(step_fraction=0.5)) == ["spatial.1", "semantic.1"]
    assert budgeted_top_k(scores, 4, cost, Budget(max_params=3)) == ["spatial.0", "spatial.1", "semantic.0"]
    shuffled = dict(reversed(list(scores.items())))
    assert budgeted_top_k(shuffled, 2, cost, Budget(lowest_block=1)) == ["spatial.1", "semantic.1"]


def test_the_budget_trades_score_for_a_shallower_backward() -> None:
    """The best slot sits in block 0; a step budget that cannot afford backward through block 0 moves up."""
    cost = CostModel(0.25, (0.25, 0.25, 0.25), dict.fromkeys(SLOT_TYPES, 0.0), dict.fromkeys(SLOT_TYPES, 1))
    scores = {n: 0.0 for n in names(3)} | {"semantic.0": 0.9, "semantic.2": 0.3, "frequency.1": 0.2}
    assert budgeted_top_k(scores, 2, cost, Budget(step_fraction=1.0)) == ["semantic.0", "semantic.2"]
    assert budgeted_top_k(scores, 2, cost, Budget(step_fraction=0.75)) == ["semantic.2", "frequency.1"]
    # only block 2 is affordable; like top-k, the set is filled up to k (here with a zero-score slot)
    assert budgeted_top_k(scores, 2, cost, Budget(step_fraction=0.5)) == ["spatial.2", "semantic.2"]


def test_infeasible_budgets_are_one_clear_line() -> None:
    cost = CostModel(0.5, (0.1, 0.1), dict.fromkeys(SLOT_TYPES, 0.1), dict.fromkeys(SLOT_TYPES, 100))
    scores = dict.fromkeys(names(2), 1.0)
    for budget, pattern in [
        (Budget(step_fraction=0.5), r"step_fraction=0.5 admits no slot: the cheapest single slot needs step_fraction "
                                    r"0\.538"),
        (Budget(max_params=99), r"max_params=99 admits no slot"),
        (Budget(lowest_block=2), r"lowest_block=2 leaves no slot: the model has blocks 0\.\.1"),
    ]:
        with pytest.raises(UserError, match=pattern) as err:
            budgeted_top_k(scores, 3, cost, budget)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "override",
    ["step_fraction=0", "step_fraction=1.5", "step_fraction=true", "lowest_block=-1", "lowest_block=1.5",
     "max_params=0", "max_params=2.5", "unknown=1"],
)
def test_bad_budget_values_in_the_config_are_user_errors(override: str) -> None:
    with pytest.raises(UserError, match="gate.budget"):
        load_config("demo", [f"gate.budget.{override}"])


def test_budget_config_defaults_to_plain_top_k_and_parses() -> None:
    assert not load_config("demo").gate.budget.is_set
    cfg = load_config("demo", ["gate.budget={step_fraction: 0.6, lowest_block: 4, max_params: 1000000}"])
    assert cfg.gate.budget == Budget(0.6, 4, 1000000)


def test_fit_recovers_an_exactly_additive_model() -> None:
    slots = names(4)
    truth = CostModel(0.3, (0.05,) * 4, {"spatial": 0.01, "semantic": 0.02, "frequency": 0.04},
                      {"spatial": 8, "semantic": 6, "frequency": 9})
    probes = probe_sets(slots)
    assert probes[0] == [] and probes[-1] == slots and len(probes) == 8
    fitted = fit_cost_model(probes, [truth.step_s(p) for p in probes], truth.type_params, 4)
    assert fitted.fixed_s == pytest.approx(0.3) and fitted.block_s == pytest.approx((0.05,) * 4)
    assert fitted.type_s == pytest.approx(truth.type_s)
    # noise that would make a cost negative is clipped: the search needs non-negative costs
    noisy = fit_cost_model(probes, [truth.step_s(p) - (0.2 if p == [] else 0) for p in probes], truth.type_params, 4)
    assert min(noisy.fixed_s, *noisy.block_s, *noisy.type_s.values()) >= 0


@pytest.mark.usefixtures("one_thread")
def test_calibration_on_a_tiny_vit_is_sane_and_leaves_the_model_as_found() -> None:
    torch.manual_seed(0)
    model = Segmentor(tiny_backbone(), 3, ToolboxConfig(), head_channels=8)
    toolbox = model.toolbox
    toolbox.set_active(["semantic.2"])
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = images(28, 28, batch=2), torch.randint(0, 3, (2, 28, 28))
    rng = torch.get_rng_state()

    cost = calibrate(model, toolbox, x, y, per_sample_cross_entropy, repeats=1)

    assert cost.depth == 4 and set(cost.type_s) == set(SLOT_TYPES)
    assert cost.type_params == type_param_counts(toolbox)
    assert all(cost.params([n]) == toolbox.slot_param_counts()[n] for n in toolbox.slot_names)
    assert min(cost.fixed_s, *cost.block_s, *cost.type_s.values()) >= 0 and cost.all_on_s > 0
    assert len(set(cost.block_s)) == 1, "identical blocks cost the same"
    # monotone: a slot lower down never makes the step cheaper; more slots never make it cheaper
    for t in SLOT_TYPES:
        steps = [cost.step_s([f"{t}.{j}"]) for j in range(4)]
        assert steps == sorted(steps, reverse=True)
    assert cost.step_s([]) <= cost.step_s(["frequency.3"]) <= cost.all_on_s
    assert cost.step_fraction(toolbox.slot_names) == 1.0
    # the model is as it was: weights, active set, modes, RNG, no gradients
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert toolbox.active_slots() == ["semantic.2"] and not model.head.training
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_the_cost_model_is_cached_and_reused_for_the_same_setup(tmp_path: Path) -> None:
    calls = []
    model = CostModel(0.1, (0.2,), {"semantic": 0.3}, {"semantic": 4})

    def measure() -> CostModel:
        calls.append(1)
        return model

    path = tmp_path / "cost_model.json"
    assert load_or_measure(path, {"batch": [2, 3, 28, 28]}, measure) == model
    assert load_or_measure(path, {"batch": [2, 3, 28, 28]}, measure) == model and len(calls) == 1
    assert json.loads(path.read_text())["cost_model"]["type_s"] == {"semantic": 0.3}
    load_or_measure(path, {"batch": [4, 3, 28, 28]}, measure)  # another setup: measured again
    assert len(calls) == 2


def tiny_cost() -> CostModel:
    """A hand-made cost model for test_fisher's TinySlotNet (2 layers)."""
    net = TinySlotNet()
    return CostModel(0.5, (0.25, 0.25), dict.fromkeys(SLOT_TYPES, 0.0), type_param_counts(net))


def test_gates_json_records_the_budget_the_cost_and_the_score_given_up() -> None:
    torch.manual_seed(0)
    model = TinySlotNet()
    selector = BudgetedSelector(FisherSelector(), Budget(lowest_block=1))
    gate = Gate(model, selector, 3, GateSchedule(every=2), num_samples=4)
    with pytest.raises(RuntimeError, match="calibrated"):
        gate.maybe_select(0, model, [make_data(4, seed=0)], per_sample_ce)
    selector.cost = tiny_cost()
    selection = gate.maybe_select(0, model, [make_data(4, seed=0)], per_sample_ce)
    assert selection is not None and all(n.endswith(".1") for n in selection.active)
    assert model.active_slots() == selection.active

    record = json.loads(json.dumps(gate.to_dict()))["selections"][0]
    budget = record["budget"]
    assert budget["limits"] == {"step_fraction": None, "lowest_block": 1, "max_params": None}
    assert budget["lowest_block"] == 1 and budget["step_fraction"] == pytest.approx(0.75)
    assert budget["params"] == selector.cost.params(selection.active)
    assert budget["top_k"] == top_k(selection.normalized, 3)
    assert budget["score"] == pytest.approx(sum(selection.normalized[n] for n in selection.active))
    assert budget["score_given_up"] == pytest.approx(budget["top_k_score"] - budget["score"])
    assert budget["score_given_up"] >= 0

    restored = Gate(model, BudgetedSelector(FisherSelector(), Budget(lowest_block=1)), 3, GateSchedule(every=2), 4)
    restored.load_state_dict(json.loads(json.dumps(gate.state_dict())))
    assert restored.to_dict() == gate.to_dict()


def test_a_budget_needs_a_scoring_selector() -> None:
    with pytest.raises(UserError, match="needs a scoring selector"):
        BudgetedSelector(RandomSelector(0), Budget(step_fraction=0.5))


@pytest.mark.usefixtures("one_thread")
def test_a_budgeted_run_writes_its_cost_model_and_the_budget_of_every_selection(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert fit_demo(out, "train.max_steps=4", "model.weights=none", "gate.budget.lowest_block=2") == 0
    selections = json.loads((out / "gates.json").read_text())["selections"]
    assert [s["step"] for s in selections] == [0, 2]
    for s in selections:
        assert s["budget"]["limits"] == {"step_fraction": None, "lowest_block": 2, "max_params": None}
        assert s["budget"]["lowest_block"] >= 2 and 0 < s["budget"]["step_fraction"] <= 1
        assert all(int(n.split(".")[1]) >= 2 for n in s["active"]) and len(s["active"]) <= 3
    cached = json.loads((out / "cost_model.json").read_text())
    assert cached["key"]["batch"][0] == 2 and len(cached["cost_model"]["block_s"]) == 4
    assert json.loads((out / "metrics.json").read_text())["run"]["mode"] == "gated-fisher-budget"


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    """Each rank 'measures' a different cost model and scores its own data; rank 0's model must win."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        measured = CostModel(0.5, (0.25 + rank, 0.25), dict.fromkeys(SLOT_TYPES, 0.01), tiny_cost().type_params)
        cost = shared(lambda: measured)
        torch.manual_seed(0)  # same weights on every rank, as DDP guarantees
        model = TinySlotNet()
        gate = Gate(model, BudgetedSelector(FisherSelector(), Budget(step_fraction=0.8), cost), 3,
                    GateSchedule(every=1), 4)
        selection = gate.maybe_select(0, model, [make_data(4, seed=100 + rank)], per_sample_ce)
        torch.save((cost.to_dict(), selection.active), f"{out_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_every_rank_budgets_with_rank_0s_cost_model_and_selects_the_same_set(tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    (cost0, active0), (cost1, active1) = (torch.load(tmp_path / f"{r}.pt") for r in range(2))
    assert cost0 == cost1 and cost0["block_s"] == [0.25, 0.25]
    assert active0 == active1 and active0


def _reduced_fit(probes: list[list[str]], seconds: list[float], types: list[str], depth: int) -> list[float]:
    """The anchored fit computed another way: fixed = the empty probe, the block cost eliminated through the
    all-slots probe, the remaining type costs by an ordinary least squares of relative errors (numpy)."""
    import numpy as np

    def row(active: list[str]) -> list[float]:
        layers = [int(n.split(".")[1]) for n in active]
        return [float(depth - min(layers)) if layers else 0.0, *[float(sum(n.split(".")[0] == t for n in active))
                                                                  for t in types]]

    empty, full = probes.index([]), max(range(len(probes)), key=lambda i: len(probes[i]))
    fixed, f_row = seconds[empty], row(probes[full])
    # b = (seconds[full] - fixed - Σ f_t c_t) / f_b, substituted into every other probe
    a, y = [], []
    for i, active in enumerate(probes):
        if i in (empty, full):
            continue
        r = row(active)
        scale = r[0] / f_row[0]
        a.append([(r[1 + j] - scale * f_row[1 + j]) / seconds[i] for j in range(len(types))])
        y.append((seconds[i] - fixed - scale * (seconds[full] - fixed)) / seconds[i])
    c = np.linalg.lstsq(np.array(a), np.array(y), rcond=None)[0]
    b = (seconds[full] - fixed - float(np.dot(f_row[1:], c))) / f_row[0]
    return [fixed, b, *c.tolist()]


def test_fit_is_exact_at_the_empty_and_all_slots_probes_and_least_squares_elsewhere() -> None:
    """Timings from a known model with a known fixed term, noise on the middle probes only: the fixed term
    and the all-on step come back exactly, the rest matches an independent elimination-and-lstsq solution."""
    slots = names(4)
    truth = CostModel(0.55, (0.03,) * 4, {"spatial": 0.009, "semantic": 0.003, "frequency": 0.014},
                      {"spatial": 8, "semantic": 6, "frequency": 9})
    probes = probe_sets(slots)
    noise = [0.0, 0.012, -0.008, 0.015, -0.01, 0.006, 0.011, 0.0]
    seconds = [truth.step_s(p) + e for p, e in zip(probes, noise, strict=True)]
    fitted = fit_cost_model(probes, seconds, truth.type_params, 4)
    assert fitted.fixed_s == pytest.approx(0.55, abs=1e-12), "the fixed term is what the empty set really pays"
    assert fitted.all_on_s == pytest.approx(truth.all_on_s, abs=1e-12)
    assert fitted.step_fraction([]) == pytest.approx(0.55 / truth.all_on_s, abs=1e-12)
    expected = _reduced_fit(probes, seconds, list(truth.type_params), 4)
    got = [fitted.fixed_s, fitted.block_s[0], *fitted.type_s.values()]
    assert got == pytest.approx(expected, abs=1e-9)
