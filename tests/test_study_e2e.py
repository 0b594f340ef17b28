"""``crossearth-gate study`` end to end: a tiny study (2 configs × 1 protocol × 2 seeds) of real fit runs.

Slow (minutes: every cell is a fresh ``fit`` process); the runner's resume and the statistics are covered in
seconds by test_study.py and test_study_stats.py.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from crossearth_gate.cli import main
from support.tiny import TINY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("study")
    path = root / "tiny_study.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny",
        "reference": "all_on",
        "seeds": 2,
        "overrides": [*TINY, "train.max_steps=2"],
        "protocols": {"A": {"description": "tile 1 → tile 5"}},
        "configs": {"all_on": {"config": "demo", "overrides": ["gate.enabled=false"]},
                    "gated": {"config": "demo"}},
        "claims": [{"name": "gated beats all-on", "better": "gated", "worse": "all_on", "protocol": "A"}],
    }, sort_keys=False))
    out = root / "out"
    assert main(["study", str(path), "--out", str(out)]) == 0
    return path, out


def test_study_writes_results_report_and_figures(study: tuple[Path, Path]) -> None:
    _, out = study
    results = json.loads((out / "results.json").read_text())
    cells = results["cells"]
    assert [(c["config"], c["seed"]) for c in cells] == [("all_on", 0), ("gated", 0), ("all_on", 1), ("gated", 1)]
    for cell in cells:
        assert cell["status"] == "done"
        assert set(cell["domains"]) == {"source_val", "tile_5"}
        assert cell["target_mean_mIoU"] == cell["domains"]["tile_5"]["mIoU"]
        assert cell["trainable_params"] > 0 and cell["step_s"] > 0 and cell["wall_s"] > 0
        assert f"--out {cell['run_dir']}" in cell["command"]
    (claim,) = results["summary"]["claims"]
    assert claim["n"] == 2 and claim["low"] is not None
    text = (out / "study.md").read_text()
    assert "gated beats all-on" in text and claim["verdict"] in text and "Student t" in text
    assert all(c["step_cost_s"] >= c["step_s"] for c in cells)  # the gated cells add their selections
    cost = results["summary"]["protocols"]["A"]["relative_cost"]
    assert cost["baseline"] == "all_on" and cost["configs"]["all_on"]["mean"] == pytest.approx(1.0)
    assert text.index("figures/cost_A.png") < text.index("## Claims"), "study.md leads with accuracy against cost"
    for figure in ("cost_A.png", "miou_A.png", "paired_A.png", "gate_maps_A.png"):
        assert (out / "figures" / figure).stat().st_size > 0
        assert f"figures/{figure}" in text
    assert not list(out.rglob("*.tmp"))


def test_a_cells_command_reproduces_it_alone(study: tuple[Path, Path], tmp_path: Path) -> None:
    _, out = study
    cell = json.loads((out / "results.json").read_text())["cells"][1]
    argv = shlex.split(cell["command"])
    assert argv[0] == "crossearth-gate"
    argv[argv.index("--out") + 1] = str(tmp_path / "again")
    assert main(argv[1:]) == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())["domains"]
    assert {name: {k: d[k] for k in ("mIoU", "mF1", "OA")} for name, d in again.items()} == cell["domains"]


def test_rerun_runs_only_the_unfinished_cell_and_report_only_runs_nothing(
        study: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    path, out = study
    killed = out / "runs" / "A" / "gated" / "seed1"
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("metrics.json") if killed not in p.parents}
    (killed / "metrics.json").unlink()  # as if the cell was killed before it finished
    assert main(["study", str(path), "--out", str(out), "--report-only"]) == 0
    missing = json.loads((out / "results.json").read_text())["cells"][3]
    assert missing["status"] == "missing" and missing["target_mean_mIoU"] is None
    assert json.loads((out / "results.json").read_text())["summary"]["claims"][0]["n"] == 1

    capsys.readouterr()
    assert main(["study", str(path), "--out", str(out), "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert "A/gated/seed1 (to run)" in listing and "A/gated/seed0 (finished)" in listing

    assert main(["study", str(path), "--out", str(out)]) == 0
    assert (killed / "metrics.json").is_file()
    after = {p: p.stat().st_mtime_ns for p in before}
    assert after == before, "finished cells were not rerun"
    progress = capsys.readouterr().out
    assert progress.count("finished earlier") == 3 and "[4/4] A/gated/seed1: done in" in progress


def test_bad_study_file_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nreference: a\nprotocols: {A: {}}\nconfigs: {a: {config: demo}}\ncolour: red\n")
    assert main(["study", str(path), "--out", str(tmp_path / "out")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "unknown key 'colour'" in err[0]
    assert not (tmp_path / "out").exists()


def test_max_cells_runs_that_many_unfinished_cells_in_study_order(
        study: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    path, out = study
    unfinished = [out / "runs" / "A" / name / "seed1" for name in ("all_on", "gated")]
    for run_dir in unfinished:
        (run_dir / "metrics.json").unlink()
    capsys.readouterr()
    assert main(["study", str(path), "--out", str(out), "--max-cells", "1"]) == 0
    assert [(d / "metrics.json").is_file() for d in unfinished] == [True, False]
    assert "[1/1] A/all_on/seed1: done in" in capsys.readouterr().out
    assert main(["study", str(path), "--out", str(out), "--max-cells", "5"]) == 0
    assert all((d / "metrics.json").is_file() for d in unfinished)


def test_max_cells_below_one_is_one_line_exit_2(study: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    path, out = study
    assert main(["study", str(path), "--out", str(out), "--max-cells", "0"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "--max-cells" in err[0]
