"""The benchmark harness end to end on a tiny ViT over the real demo images: every configuration, every
headline ratio, the profile, and a command that reproduces the run."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from crossearth_gate.benchmark.command import CONFIGS, BenchSetup
from crossearth_gate.benchmark.spread import spread, spreads, warning_line, wide
from crossearth_gate.cli import main
from support.threads import one_thread
from support.tiny import benchmark_flags

RATIOS = ("gated_step_vs_all_on", "compute_aware_step_vs_all_on", "merged_inference_vs_bare",
          "selection_overhead_at_n100")


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """One tiny run; one thread (also in its child processes): tiny steps on a shared 2-core machine."""
    folder = tmp_path_factory.mktemp("bench")
    out, profile = folder / "bench.json", folder / "profile.txt"
    with one_thread():
        assert main(["benchmark", *benchmark_flags(), "--out", str(out), "--profile", str(profile)]) == 0
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
    assert data["sets"]["source"] == "selected in this run" and data["sets"]["gated"] == rows["gated"]["active"]
    # the cost model's prediction beside every measured ratio it prices (full fine-tuning: not a slot set)
    assert rows["all-on"]["predicted_step_vs_all_on"] == pytest.approx(1.0)
    assert "predicted_step_vs_all_on" not in rows["full-finetune"]
    assert rows["frozen"]["predicted_step_vs_all_on"] == pytest.approx(
        data["compute_aware"]["cost_model"]["fixed_s"] / data["compute_aware"]["probes"][-1]["seconds"])
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
        "--steps 5 --warmup-steps 2 --select-after 5 --every 100 --num-samples 4 --step-fraction 0.6 --rounds 3 "
        "--predict-size 1024 --out b.json"
    )


def test_every_ratio_is_measured_per_round_with_its_spread(result: tuple[dict, Path]) -> None:
    """Each round's ratio comes from that round's own measurements; the headline is their median."""
    data = result[0]
    assert len(data["rounds"]) == 2
    for name, s in data["ratio_spreads"].items():
        assert len(s["rounds"]) == 2 and s["min"] <= s["median"] <= s["max"], name
        assert data["ratios"][name] == s["median"]
    for i, record in enumerate(data["rounds"]):
        steps = record["step_s"]
        assert set(steps) == set(CONFIGS)
        assert all(steps[c] == statistics.median(record["step_times_s"][c]) for c in CONFIGS)
        assert data["ratio_spreads"]["gated_step_vs_all_on"]["rounds"][i] == steps["gated"] / steps["all-on"]
        merged = record["predict"]["torch-merged_megapixels_per_s"]
        assert data["ratio_spreads"]["predict_onnx_vs_torch_merged_throughput"]["rounds"][i] == (
            record["predict"]["onnx_megapixels_per_s"] / merged)
    rows = {r["config"]: r for r in data["rows"]}
    low, high = rows["gated"]["step_vs_all_on_spread"]
    assert low <= rows["gated"]["step_vs_all_on"] <= high


def test_predict_runners_are_measured_and_agree(result: tuple[dict, Path]) -> None:
    """PyTorch unmerged, merged and onnxruntime predict the same scene; the exported graph matches PyTorch."""
    predict = result[0]["predict"]
    assert set(predict["runners"]) == {"torch-unmerged", "torch-merged", "onnx", "onnx-unoptimised"}
    assert all(r["peak_rss_mb"] > 0 for r in predict["runners"].values())
    assert predict["parity"]["max_abs_logit_diff"] < 1e-4 and predict["parity"]["logit_std"] > 0
    assert min(predict["class_agreement"].values()) >= 0.9999
    assert all(s["median"] > 0 for s in predict["megapixels_per_s"].values())
    assert predict["windows"] == 9 and predict["window_gflops"] > 0  # 64 px scene, 32 px windows at stride 21
    shares = [v for k, v in result[0]["ratios"].items() if k.endswith("_share_of_matmul_rate")]
    assert len(shares) == 4 and all(v > 0 for v in shares)


def test_spread_summary_and_warning_on_hand_made_rounds() -> None:
    s = spread([0.62, 0.60, 0.71])
    assert (s["median"], s["min"], s["max"]) == (0.62, 0.60, 0.71) and abs(s["half_width"] - 0.055) < 1e-12
    tight = spreads([{"a": 0.50, "b": 1.0}, {"a": 0.55, "b": 1.2}])
    assert wide(tight) == ["b"]  # ±0.025 passes, ±0.1 does not
    line = warning_line(wide(tight), 2)
    assert line is not None and "\n" not in line and "b" in line and "rerun on a quieter machine" in line
    assert warning_line([], 2) is None


@pytest.mark.parametrize(("flags", "needle"), [(["--rounds", "0"], "--rounds >= 1"),
                                               (["--predict-size", "100"], "--predict-size 100")])
def test_bad_rounds_or_scene_size_is_one_line(flags: list[str], needle: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["benchmark", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err
