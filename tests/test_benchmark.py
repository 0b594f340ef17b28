"""The benchmark harness end to end on a tiny ViT over the real demo images: every configuration, every
headline ratio, the profile, and a command that reproduces the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from crossearth_gate.benchmark.command import CONFIGS, BenchSetup
from crossearth_gate.cli import main

TINY = ["--weights", "none", "--backbone", "test_vit", "--img-size", "32", "--batch-size", "2", "--steps", "1",
        "--warmup-steps", "0", "--select-after", "1", "--num-samples", "2", "--step-fraction", "1.0"]
RATIOS = ("gated_step_vs_all_on", "compute_aware_step_vs_all_on", "merged_inference_vs_bare",
          "selection_overhead_at_n100")


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """One tiny run; one thread (also in its child processes): tiny steps on a shared 2-core machine."""
    folder = tmp_path_factory.mktemp("bench")
    out, profile = folder / "bench.json", folder / "profile.txt"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["benchmark", *TINY, "--out", str(out), "--profile", str(profile)]) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads(out.read_text()), profile


def test_every_configuration_is_measured_side_by_side(result: tuple[dict, Path]) -> None:
    data = result[0]
    rows = {r["config"]: r for r in data["rows"]}
    assert tuple(rows) == CONFIGS
    assert rows["all-on"]["step_vs_all_on"] == 1.0 and rows["all-on"]["active_slots"] == 3 * 6
    # the gated configurations train the sets the selections really chose on the demo images
    k = data["selection"]["k"]
    assert rows["gated"]["active"] == data["selection"]["gated_active"] and len(rows["gated"]["active"]) == k
    assert rows["compute-aware"]["active"] == rows["gated"]["active"], "a budget of 1.0 never binds: plain top-k"
    assert {n.split(".")[0] for n in rows["lora"]["active"]} == {"spatial"}
    assert rows["frozen"]["active_slots"] == 0 and rows["frozen"]["lowest_active_layer"] is None
    assert rows["full-finetune"]["trainable_params"] > rows["all-on"]["trainable_params"]
    # early stopping of backward: frozen keeps the fewest activations, all-on more than any gated set
    assert rows["frozen"]["saved_activation_mb"] <= min(r["saved_activation_mb"] for r in data["rows"])
    assert rows["gated"]["saved_activation_mb"] <= rows["all-on"]["saved_activation_mb"]
    assert all(r["peak_rss_mb"] > 0 and r["step_s"] > 0 for r in data["rows"])


def test_every_headline_ratio_and_record_is_written(result: tuple[dict, Path]) -> None:
    data = result[0]
    for key in RATIOS:
        assert data["ratios"][key] > 0, key
    assert 0 < data["ratios"]["selection_overhead_at_n100"] < 1
    assert set(data["inference"]) == {"bare_s", "merged_gated_s", "merged_compute_aware_s"}
    budget = data["compute_aware"]["budget"]
    assert budget["limits"]["step_fraction"] == 1.0 and budget["score_given_up"] >= 0
    assert set(data["compute_aware"]["cost_model"]) == {"fixed_s", "block_s", "type_s", "type_params"}
    assert set(data["selection"]["methods"]) == {"loop", "vmap"}
    assert data["setup"]["weights"] == "none"


def test_the_profile_and_the_reproducing_command(result: tuple[dict, Path]) -> None:
    data, profile = result
    table = profile.read_text()
    assert "Self CPU" in table and "aten::" in table
    command = data["command"]
    assert command.startswith("crossearth-gate benchmark ") and "--weights none" in command
    assert "--backbone test_vit" in command and f"--profile {profile}" in command


def test_the_command_lists_every_option() -> None:
    command = BenchSetup().command(Path("b.json"), None)
    assert command == (
        "crossearth-gate benchmark --weights auto --backbone vit_small_patch14_dinov2 --img-size 224 --batch-size 4 "
        "--steps 5 --warmup-steps 2 --select-after 5 --every 100 --num-samples 8 --step-fraction 0.6 --out b.json"
    )
