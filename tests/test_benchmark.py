"""The benchmark harness: its gated set avoids the lowest third, and one tiny run fills the whole table."""

from __future__ import annotations

from crossearth_gate.benchmark import BenchSetup, format_table, run_benchmark, upper_slots
from crossearth_gate.toolbox.slots import SLOT_TYPES


def test_upper_slots_avoid_the_lowest_third_and_have_k_slots() -> None:
    depth = 12
    names = [f"{t}.{i}" for t in SLOT_TYPES for i in range(depth)]
    chosen = upper_slots(names, depth, 9)
    assert len(chosen) == 9 and len(set(chosen)) == 9
    assert all(int(n.split(".")[1]) >= depth // 3 for n in chosen)
    assert {n.split(".")[0] for n in chosen} == set(SLOT_TYPES), "spread over all three types"


def test_benchmark_runs_every_configuration_side_by_side() -> None:
    setup = BenchSetup("test_vit", 32, 2, steps=1, warmup_steps=0, every=100, num_samples=2, threads=1)
    result = run_benchmark(setup)
    rows = {r["config"]: r for r in result["rows"]}
    assert set(rows) == {"all-on", "gated", "full-finetune", "frozen"}
    assert rows["all-on"]["step_vs_all_on"] == 1.0
    assert rows["gated"]["active_slots"] == round(0.25 * 3 * 6)
    assert rows["gated"]["lowest_active_layer"] >= 6 // 3
    # early stopping of backward: gated keeps fewer activations than all-on, frozen the fewest
    assert rows["frozen"]["saved_activation_mb"] < rows["gated"]["saved_activation_mb"]
    assert rows["gated"]["saved_activation_mb"] < rows["all-on"]["saved_activation_mb"]
    assert rows["full-finetune"]["trainable_params"] > rows["all-on"]["trainable_params"]
    for method in ("loop", "vmap"):
        assert 0 < result["selection"]["methods"][method]["overhead_fraction"] < 1
    assert "| gated |" in format_table(result)
