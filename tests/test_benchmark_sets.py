"""The benchmark's gated sets as a file: written by --select-only, read back by --sets, timed as given."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from crossearth_gate.benchmark.sets import FORMAT, check_against, read_sets, sets_record
from crossearth_gate.cli import main
from crossearth_gate.util.errors import UserError

TINY = ["--weights", "none", "--backbone", "test_vit", "--img-size", "32", "--batch-size", "2", "--steps", "1",
        "--warmup-steps", "0", "--select-after", "1", "--num-samples", "2", "--step-fraction", "0.9"]
SETUP = {"weights": "none", "backbone": "test_vit", "img_size": 32, "batch_size": 2, "select_after": 1,
         "num_samples": 2, "step_fraction": 0.9, "rounds": 3}
# not what the selection picks: proves the run times the file's sets
GIVEN = {"gated": ["spatial.0", "frequency.5"], "compute_aware": ["semantic.5"]}


@pytest.fixture
def one_thread() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_a_sets_file_round_trips_and_a_benchmark_json_reads_as_its_sets(tmp_path: Path) -> None:
    record = sets_record(GIVEN["gated"], GIVEN["compute_aware"], SETUP)
    assert record["format"] == FORMAT and "rounds" not in record["selected_with"]
    sets = read_sets(write(tmp_path / "sets.json", record))
    assert (sets["gated"], sets["compute_aware"]) == (GIVEN["gated"], GIVEN["compute_aware"])
    assert sets["selected_with"] == record["selected_with"] and sets["file"] == str(tmp_path / "sets.json")
    assert len(sets["sha256"]) == 64
    from_json = read_sets(write(tmp_path / "bench.json", {"ratios": {}, "sets": {**record, "source": "x"}}))
    assert (from_json["gated"], from_json["compute_aware"]) == (GIVEN["gated"], GIVEN["compute_aware"])


def test_sets_must_be_this_models() -> None:
    sets = {**sets_record(GIVEN["gated"], GIVEN["compute_aware"], SETUP), "file": "s.json"}
    slots = [f"{t}.{i}" for t in ("spatial", "semantic", "frequency") for i in range(6)]
    check_against(sets, "test_vit", slots)
    with pytest.raises(UserError, match="selected for backbone test_vit, this run uses vit_small"):
        check_against(sets, "vit_small_patch14_dinov2", slots)
    with pytest.raises(UserError, match="does not have: frequency.5"):
        check_against(sets, "test_vit", slots[:6])


@pytest.mark.parametrize(("content", "needle"), [
    ("{not json", "not JSON"),
    ('{"gated": ["spatial.0"]}', "neither a sets file"),
    (json.dumps({**sets_record([], ["semantic.5"], SETUP)}), "'gated' must be a non-empty list"),
    (json.dumps({**sets_record(["spatial.0", "spatial.0"], ["semantic.5"], SETUP)}), "names a slot twice"),
    (json.dumps({**sets_record(["spatial.0"], ["lora.x"], SETUP)}), "not a slot name"),
    (json.dumps({k: v for k, v in sets_record(["spatial.0"], ["semantic.5"], SETUP).items()
                 if k != "selected_with"}), "selected_with"),
])
def test_a_bad_sets_file_is_one_line_and_exit_2_before_any_work(
        content: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "sets.json"
    bad.write_text(content)
    out = tmp_path / "bench.json"
    assert main(["benchmark", *TINY, "--sets", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and str(bad) in err
    assert not out.exists()


def test_a_missing_sets_file_and_select_only_without_out_are_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["benchmark", *TINY, "--sets", str(tmp_path / "none.json")]) == 2
    assert "cannot read it" in capsys.readouterr().err
    assert main(["benchmark", *TINY, "--select-only"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--select-only" in err


@pytest.mark.usefixtures("one_thread")
def test_select_only_writes_the_sets_and_a_run_times_the_given_sets(tmp_path: Path) -> None:
    sets_file = tmp_path / "sets.json"
    assert main(["benchmark", *TINY, "--select-only", "--out", str(sets_file)]) == 0
    selected = json.loads(sets_file.read_text())
    assert read_sets(sets_file)["gated"] == selected["gated"] and len(selected["gated"]) == 5  # k = ceil(18 / 4)
    assert selected["compute_aware_predicted_step_vs_all_on"] <= 0.9 and "--select-only" in selected["command"]

    given = write(tmp_path / "given.json", sets_record(GIVEN["gated"], GIVEN["compute_aware"], SETUP))
    out = tmp_path / "bench.json"
    assert main(["benchmark", *TINY, "--rounds", "1", "--predict-size", "0", "--sets", str(given),
                 "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = {r["config"]: r for r in data["rows"]}
    assert rows["gated"]["active"] == GIVEN["gated"] and rows["compute-aware"]["active"] == GIVEN["compute_aware"]
    assert data["selection"]["gated_active"] == GIVEN["gated"]
    assert data["sets"]["source"] == f"file {given}" and data["sets"]["file"] == str(given)
    # what this run would have timed, kept beside (random tiny weights: near-tied scores, another pick may win)
    assert len(data["sets"]["selected_in_this_run"]["gated"]) == 5
    assert f"--sets {given}" in data["command"]
    budget = data["compute_aware"]["budget"]
    assert budget["step_fraction"] == pytest.approx(rows["compute-aware"]["predicted_step_vs_all_on"])
