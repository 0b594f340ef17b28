"""Study files, aggregation of cell records, and the resumable runner (with a stand-in for fit)."""

from __future__ import annotations

import json
import math
import shlex
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from crossearth_gate.config.schema import load_config
from crossearth_gate.study.aggregate import aggregate
from crossearth_gate.study.markdown import study_markdown
from crossearth_gate.study.records import cell_record, step_cost
from crossearth_gate.study.runner import run_cells
from crossearth_gate.study.spec import load_study, parse_study
from crossearth_gate.util.errors import UserError
from support.paths import REPO

SHIPPED = REPO / "configs" / "studies" / "paper_claims.yaml"


def study_dict(**changes: Any) -> dict[str, Any]:
    data = {
        "name": "toy",
        "reference": "ref",
        "seeds": 3,
        "overrides": ["train.max_steps=2"],
        "protocols": {"A": {"overrides": ["data.batch_size=2"]}, "B": {}},
        "configs": {
            "ref": {"config": "demo", "overrides": ["gate.enabled=false"]},
            "gated": {"config": "demo", "seeds": {"B": [7]}},
        },
        "claims": [{"name": "gated beats ref", "better": "gated", "worse": "ref", "protocol": "A"}],
    }
    data.update(changes)
    return data


def toy_study(**changes: Any):
    return parse_study(study_dict(**changes), Path("toy.yaml"))


def claim_with_paper(paper: Any) -> dict[str, Any]:
    return {"name": "x", "better": "gated", "worse": "ref", "protocol": "A", "paper": paper}


def one_protocol_study(**changes: Any):
    """Protocol A only; both configs get the study's seeds."""
    configs = {"ref": {"config": "demo", "overrides": ["gate.enabled=false"]}, "gated": {"config": "demo"}}
    return toy_study(**{"protocols": {"A": {}}, "configs": configs, **changes})


# ----------------------------------------------------------------------------- the study file


def test_cells_first_seeds_first_with_overrides_in_order() -> None:
    cells = toy_study().cells()
    assert [c.key for c in cells[:4]] == ["A/ref/seed0", "A/gated/seed0", "B/ref/seed0", "B/gated/seed7"]
    assert len(cells) == 3 + 3 + 3 + 1
    a_ref = cells[0]
    assert a_ref.overrides == ("train.max_steps=2", "data.batch_size=2", "gate.enabled=false", "train.seed=0")
    out = Path("out")
    assert a_ref.fit_args(out) == ["fit", "--config", "demo", "--out", "out/runs/A/ref/seed0", *a_ref.overrides]
    assert shlex.split(a_ref.command(out)) == ["crossearth-gate", *a_ref.fit_args(out)]


@pytest.mark.parametrize(("changes", "message"), [
    ({"colour": 1}, "unknown key 'colour'"),
    ({"reference": "nope"}, "reference 'nope' is not a config"),
    ({"seeds": 0}, "seeds: expected a count"),
    ({"overrides": ["no-equals-sign"]}, "overrides: expected a list of key.sub=value"),
    ({"configs": {"ref": {"config": "no/such.yaml"}}}, "configs.ref.config: config 'no/such.yaml' not found"),
    ({"configs": {"ref": {"config": "demo", "protocols": ["Z"]}}}, "configs.ref.protocols"),
    ({"configs": {"ref": {"config": "demo", "seed": 3}}}, "configs.ref: unknown key 'seed'"),
    ({"configs": {"ref": {"overrides": []}}}, "configs.ref: missing key 'config'"),
    ({"configs": {"ref": {"config": "demo", "seeds": {"Z": 2}}}}, "configs.ref.seeds: unknown key 'Z'"),
    ({"claims": [{"name": "x", "better": "gated", "worse": "ghost", "protocol": "A"}]}, "'ghost' is not a config"),
    ({"claims": [{"name": "x", "better": "gated", "protocol": "A"}]}, "missing key 'worse'"),
    ({"protocols": {"A/B": {}}}, "is not a valid name"),
    ({"claims": [claim_with_paper({"difference": 2.3})]}, "paper: missing key 'where'"),
    ({"claims": [claim_with_paper({"difference": "2.3", "where": "CASID"})]}, "paper.difference: expected a number"),
    ({"claims": [claim_with_paper({"difference": 2.3, "where": " "})]}, "paper.where: expected the paper's setting"),
    ({"claims": [claim_with_paper({"difference": 2.3, "where": "CASID", "seeds": 3})]}, "paper: unknown key 'seeds'"),
])
def test_bad_study_is_one_clear_line(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=None) as err:
        toy_study(**changes)
    text = str(err.value)
    assert message in text and "\n" not in text


def test_config_paths_are_relative_to_the_study_file(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("_base_: demo\nname: local\n")
    path = tmp_path / "sub" / "study.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(study_dict(configs={"ref": {"config": "../base.yaml"}}, claims=[])))
    (cell,) = {c.config_path for c in load_study(path).cells()}
    assert Path(cell) == tmp_path / "base.yaml"


def test_shipped_study_loads_and_every_cell_resolves() -> None:
    study = load_study(SHIPPED)
    cells = study.cells()
    keys = {c.key for c in cells}
    for config in ("frozen", "all_on", "gated_fisher", "gated_random"):
        assert {f"{p}/{config}/seed{s}" for p in "AB" for s in range(3)} <= keys
    assert {f"{p}/{c}/seed0" for p in "ABC" for c in ("full_finetune", "lora", "gated_gradnorm")} <= keys
    assert {f"A/fisher_k{k}/seed0" for k in (4, 18, 27, 36)} <= keys and "B/fisher_k4/seed0" not in keys
    assert {f"A/fisher_budget60/seed{s}" for s in range(3)} <= keys  # the compute-aware gate (3 seeds, A only)
    assert {f"A/fisher_warmup50/seed{s}" for s in range(3)} <= keys  # the targeted runs (A only)
    assert {f"A/{c}/seed{s}" for c in ("fisher_upinit", "random_warmup50") for s in range(3)} <= keys
    assert len(cells) == 77
    for cell in cells:
        cfg = load_config(cell.config_path, list(cell.overrides))
        assert cfg.model.weights == "auto" and cfg.train.seed == cell.seed
        if cell.protocol == "C":
            assert (cfg.data.source.dataset, list(cfg.data.targets)) == ("potsdam", ["vaihingen"])
        else:
            source, targets = ([1, 2, 3, 4], [5, 6, 7, 8]) if cell.protocol == "A" else ([5, 6, 7, 8], [1, 2, 3, 4])
            assert cfg.data.source.tiles == source
            assert [t.tiles[0] for t in cfg.data.targets.values()] == targets
    ks = {c.config: load_config(c.config_path, list(c.overrides)).gate.k for c in cells if c.protocol == "A"}
    assert (ks["fisher_k4"], ks["fisher_k18"], ks["fisher_k27"], ks["gated_fisher"]) == (4, 18, 27, 0.25)
    a = {c.config: load_config(c.config_path, list(c.overrides)) for c in cells if c.protocol == "A"}
    gates = (a["fisher_warmup50"].gate.warmup, a["fisher_every25"].gate.every, a["fisher_once"].gate.every)
    assert gates == (50, 25, 100)
    assert (a["fisher_lr1e-3"].train.lr, a["all_on_lr1e-4"].train.lr, a["gated_fisher"].train.lr) == (1e-3, 1e-4, 3e-4)
    assert a["fisher_400"].train.max_steps == a["all_on_400"].train.max_steps == 400



def test_dubai_tiles_moved_to_the_sweeps_schedule_and_the_100_step_study_pins_the_old_rate() -> None:
    """dubai_tiles trains at lr 1e-3 for 500 steps (the converged sweep); paper_claims ran at its old 3e-4.

    Without the study's own ``train.lr=0.0003`` every cell that sets no rate would silently move to 1e-3.
    """
    shipped = load_config("dubai_tiles")
    assert (shipped.train.lr, shipped.train.max_steps) == (1e-3, 500)
    assert (shipped.data.crop_size, shipped.train.val_every, shipped.gate.num_samples, shipped.gate.warmup) == (
        224, 100, 8, 0)
    study = load_study(SHIPPED)
    unpinned = 0
    for cell in study.cells():
        entry = study.configs[cell.config].overrides
        cfg = load_config(cell.config_path, list(cell.overrides))
        if not any(o.startswith("train.lr=") for o in entry):
            unpinned += 1
            assert cfg.train.lr == 3e-4, cell.key
        if not any(o.startswith("train.max_steps=") for o in entry):
            assert cfg.train.max_steps == 100, cell.key
    assert unpinned == len(study.cells()) - 3 * 3 - 2, "every cell but the lr 1e-3 (3 x 3 seeds) and 1e-4 (2) ones"

def test_converged_study_pairs_its_configs_at_one_schedule() -> None:
    study = load_study(REPO / "configs" / "studies" / "converged.yaml")
    cells = study.cells()
    counts: dict[tuple[str, str], int] = {}
    for cell in cells:
        counts[cell.protocol, cell.config] = counts.get((cell.protocol, cell.config), 0) + 1
    # issue 20: 5 seeds on A and B (3 for frozen and the compute-aware gate), 3 on C
    for config in ("all_on_lr1e-3", "fisher_lr1e-3", "random_lr1e-3"):
        assert (counts["A", config], counts["B", config], counts["C", config]) == (5, 5, 3)
    for config in ("frozen_lr1e-3", "budget60_lr1e-3"):
        assert (counts["A", config], counts["B", config], counts["C", config]) == (3, 3, 3)
    assert {c for p, c in counts if p == "D"} == {"dg_lr1e-3", "dacs_lr1e-3", "dacs_tau0.8_lr1e-3"}
    configs = {(c.protocol, c.config): load_config(c.config_path, list(c.overrides)) for c in cells if c.seed == 0}
    paired = [cfg for (p, name), cfg in configs.items() if not name.startswith(("all_on_lr3", "fisher_lr3"))]
    assert {(cfg.train.lr, cfg.train.max_steps, cfg.data.crop_size) for cfg in paired} == {(1e-3, 500, 168)}
    assert [t for t in configs["A", "fisher_no_spatial_lr1e-3"].toolbox.types] == ["semantic", "frequency"]
    assert [t for t in configs["A", "fisher_no_frequency_lr1e-3"].toolbox.types] == ["spatial", "semantic"]
    assert configs["A", "budget60_lr1e-3"].gate.budget.step_fraction == 0.6
    assert not configs["B", "frozen_lr1e-3"].gate.enabled
    dacs, dg = configs["D", "dacs_lr1e-3"], configs["D", "dg_lr1e-3"]
    assert (dacs.train.adaptation, dg.train.adaptation) == ("dacs", "none")
    assert list(dacs.data.targets) == list(dg.data.targets)
    assert (dacs.adaptation.confidence, configs["D", "dacs_tau0.8_lr1e-3"].adaptation.confidence) == (0.968, 0.8)


# ----------------------------------------------------------------------------- aggregation


def made_up_cell(protocol: str, config: str, seed: int, target: float | None, status: str = "done") -> dict:
    """A results.json record whose two targets average to ``target`` (tile_5 = target - 1, tile_6 = target + 1)."""
    domains = {} if target is None else {
        "source_val": {"mIoU": 50.0, "mF1": 60.0, "OA": 80.0},
        "tile_5": {"mIoU": target - 1, "mF1": 0.0, "OA": 0.0},
        "tile_6": {"mIoU": target + 1, "mF1": 0.0, "OA": 0.0},
    }
    return {"protocol": protocol, "config": config, "seed": seed, "status": status, "domains": domains,
            "target_mean_mIoU": target, "trainable_params": 1000 + seed, "step_s": 0.5, "step_cost_s": None,
            "wall_s": 60.0,
            "command": f"crossearth-gate fit ... {config} {seed}", "error": None if status == "done" else "boom"}


def test_aggregate_against_hand_computed_values(tmp_path: Path) -> None:
    cells = [
        made_up_cell("A", "ref", 0, 30.0), made_up_cell("A", "ref", 1, 32.0), made_up_cell("A", "ref", 2, 34.0),
        made_up_cell("A", "gated", 0, 33.0), made_up_cell("A", "gated", 1, 33.5),
        made_up_cell("A", "gated", 2, None, status="failed"),  # died: must not count as 0
        made_up_cell("B", "ref", 0, 40.0), made_up_cell("B", "ref", 1, None, "missing"),
        made_up_cell("B", "ref", 2, 44.0), made_up_cell("B", "gated", 7, 41.0),
    ]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"cells": cells}))
    summary = aggregate(json.loads(path.read_text())["cells"], toy_study())

    a = summary["protocols"]["A"]
    assert a["domains"] == ["source_val", "tile_5", "tile_6"]
    ref, gated = a["configs"]["ref"], a["configs"]["gated"]
    assert ref["target_mean_mIoU"] == {"n": 3, "mean": 32.0, "std": 2.0}
    assert ref["domains"]["tile_5"] == {"n": 3, "mean": 31.0, "std": 2.0}
    assert gated["seeds"] == [0, 1] and gated["not_done"] == [2]
    assert gated["target_mean_mIoU"]["n"] == 2 and gated["target_mean_mIoU"]["mean"] == 33.25
    assert gated["target_mean_mIoU"]["std"] == pytest.approx(math.sqrt(0.125))
    assert gated["trainable_params"] == 1000.5

    diff = a["paired"]["gated"]  # seeds 0, 1: 33 - 30 = 3 and 33.5 - 32 = 1.5
    assert diff["seeds"] == [0, 1] and diff["differences"] == [3.0, 1.5]
    assert diff["mean"] == 2.25 and diff["std"] == pytest.approx(math.sqrt(1.125))
    half = 12.7062 * math.sqrt(1.125) / math.sqrt(2)
    assert diff["low"] == pytest.approx(2.25 - half) and diff["high"] == pytest.approx(2.25 + half)
    assert diff["verdict"] == "inconclusive at this sample size"

    b = summary["protocols"]["B"]
    assert b["configs"]["ref"]["target_mean_mIoU"] == {"n": 2, "mean": 42.0, "std": pytest.approx(math.sqrt(8))}
    assert b["paired"]["gated"]["n"] == 0, "seed 7 has no reference partner"
    (claim,) = summary["claims"]
    assert claim["name"] == "gated beats ref" and claim["mean"] == 2.25 and claim["n"] == 2
    assert {(c["config"], c["seed"], c["status"]) for c in summary["not_done"]} == {
        ("gated", 2, "failed"), ("ref", 1, "missing")}


def test_step_cost_adds_the_selections_spread_over_the_timed_steps() -> None:
    assert step_cost({"step_s": 0.5, "timed_steps": 100}, {"gate": 10.0, "test": 99.0}) == 0.6
    assert step_cost({"step_s": 0.5, "timed_steps": 100}, {}) == 0.5  # no gate: the median step alone
    assert step_cost({"step_s": None, "timed_steps": 0}, {"gate": 1.0}) is None


def test_relative_cost_against_hand_computed_ratios() -> None:
    costs = {("ref", 0): 1.0, ("ref", 1): 1.2, ("gated", 0): 0.66, ("gated", 1): 0.77}
    cells = [{**made_up_cell("A", c, s, 40.0 + s), "step_cost_s": v} for (c, s), v in costs.items()]
    cells += [{**made_up_cell("B", "gated", 7, 41.0), "step_cost_s": 0.5}]
    summary = aggregate(cells, toy_study())
    a = summary["protocols"]["A"]
    assert a["relative_cost"]["baseline"] == "ref"
    ref, gated = a["relative_cost"]["configs"]["ref"], a["relative_cost"]["configs"]["gated"]
    assert (ref["n"], ref["mean"], ref["low"], ref["high"]) == (2, pytest.approx(1.0), pytest.approx(1 / 1.1),
                                                                pytest.approx(1.2 / 1.1))
    assert gated["mean"] == pytest.approx(0.65) and gated["low"] == pytest.approx(0.6)
    half = 12.7062 * math.sqrt(0.5) / math.sqrt(2)  # seeds 40 and 41: std sqrt(0.5), t with df 1
    assert a["configs"]["gated"]["target_mean_interval"] == [pytest.approx(40.5 - half), pytest.approx(40.5 + half)]
    b = summary["protocols"]["B"]["relative_cost"]  # no reference cell under B: the first config with a cost
    assert b["baseline"] == "gated" and b["configs"]["gated"]["mean"] == 1.0
    assert aggregate([made_up_cell("A", "ref", 0, 40.0)], toy_study())["protocols"]["A"]["relative_cost"] == {
        "baseline": None, "configs": {}}


def test_the_papers_difference_is_reported_beside_ours_and_enters_no_verdict() -> None:
    paper = {"difference": 2.3, "where": "CASID mean, ablation"}
    claims = [{"name": "gated beats ref", "better": "gated", "worse": "ref", "protocol": "A", "paper": paper},
              {"name": "ref beats gated", "better": "ref", "worse": "gated", "protocol": "A"}]
    study = one_protocol_study(claims=claims)
    cells = [made_up_cell("A", "ref", s, 30.0 + s) for s in range(3)]
    cells += [made_up_cell("A", "gated", s, 29.0 + s) for s in range(3)]  # 1 point below ref on every seed
    summary = aggregate(cells, study)
    with_paper, without = summary["claims"]
    assert with_paper["paper"] == paper and without["paper"] is None
    assert with_paper["mean"] == -1.0 and with_paper["verdict"] == "contradicted"  # the paper's +2.3 changes nothing
    text = study_markdown(study, summary, {}, {}, "crossearth-gate study toy.yaml --out out", Path("out"))
    rows = [line for line in text.splitlines() if line.startswith(("| gated beats ref", "| ref beats"))]
    assert rows[0].endswith("| +2.30 (CASID mean, ablation) |") and rows[1].endswith("| – |")
    assert "The paper column is the difference the paper reports" in text
    plain = one_protocol_study()
    assert "the paper" not in study_markdown(plain, aggregate(cells, plain), {}, {}, "c", Path("out"))


def test_claims_range_leaves_out_two_seed_intervals_and_keeps_every_mean() -> None:
    from crossearth_gate.study.figures import claims_range

    three = {"n": 3, "mean": 1.0, "low": -2.0, "high": 4.0}
    two = {"n": 2, "mean": -0.5, "low": -30.0, "high": 29.0, "paper": {"difference": 5.0, "where": "x"}}
    one = {"n": 1, "mean": -6.0, "low": None, "high": None}
    assert claims_range([three, two, one]) == pytest.approx((-6.88, 5.88))  # -6 .. 5, padded by 0.88
    assert claims_range([two]) == pytest.approx((-34.72, 33.72))  # no 3-seed claim: the 2-seed interval counts
    assert claims_range([{"n": 1, "mean": 0.0, "low": None, "high": None}]) == pytest.approx((-0.08, 0.08))


def test_claims_figure_shows_every_paired_claim_with_the_papers_difference(tmp_path: Path) -> None:
    from crossearth_gate.study.figures import claims_figure, plot_claims

    paper = {"difference": 2.3, "where": "CASID"}
    claims = [{"name": "gated beats ref", "better": "gated", "worse": "ref", "protocol": "A", "paper": paper},
              {"name": "ref beats gated", "better": "ref", "worse": "gated", "protocol": "A"}]
    study = one_protocol_study(claims=claims)
    cells = [made_up_cell("A", "ref", s, 30.0 + s) for s in range(3)]
    cells += [made_up_cell("A", "gated", s, 29.0 + s) for s in range(2)]  # seeds 0, 1: 1 point below ref
    summary = aggregate(cells, study)
    ax = claims_figure(summary["claims"]).axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["gated beats ref (A, n=2)", "ref beats gated (A, n=2)"]
    points = {tuple(line.get_xydata()[0]) for line in ax.get_lines() if len(line.get_xydata())}
    assert {(-1.0, 0.0), (1.0, 1.0), (2.3, 0.0)} <= points, "each mean on its row, the paper's +2.3 on the first"
    out = tmp_path / "out"
    path = plot_claims(summary["claims"], out / "figures" / "claims.png")
    assert path is not None and path.stat().st_size > 0
    text = study_markdown(study, summary, {}, {}, "c", out, path)
    assert text.index("![claims](figures/claims.png)") < text.index("| claim |")
    assert ax.get_xlim() == pytest.approx((-1.264, 2.564))  # -1 .. 2.3 (the paper), padded by 8 % of 3.3
    no_pairs = aggregate(cells[:3], study)["claims"]  # ref only
    assert claims_figure(no_pairs) is None and plot_claims(no_pairs, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_clear_gain_over_three_seeds_is_supported() -> None:
    cells = [made_up_cell("A", "ref", s, 30.0 + s) for s in range(3)]
    cells += [made_up_cell("A", "gated", s, 33.0 + s + 0.1 * s) for s in range(3)]
    (claim,) = aggregate(cells, one_protocol_study())["claims"]
    assert claim["verdict"] == "supported" and claim["low"] > 0


# ----------------------------------------------------------------------------- runner


class FakeFit:
    """Stands in for the ``fit`` subprocess: writes metrics.json, or fails, or is 'killed' at a given call."""

    def __init__(self, fail: set[str] = frozenset(), kill_at: int | None = None) -> None:
        self.calls: list[str] = []
        self.fail = fail
        self.kill_at = kill_at

    def __call__(self, argv: list[str], stdout: Any, stderr: Any) -> int:
        out = Path(argv[argv.index("--out") + 1])
        key = "/".join(out.parts[-3:])
        if self.kill_at is not None and len(self.calls) == self.kill_at:
            raise KeyboardInterrupt
        self.calls.append(key)
        if key in self.fail:
            stdout.write("crossearth-gate: error: data folder not found\n")
            return 2
        seed = int(out.name.removeprefix("seed"))
        metrics = {"domains": {"source_val": {"mIoU": 50.0, "mF1": 1.0, "OA": 2.0},
                               "tile_5": {"mIoU": 30.0 + seed, "mF1": 1.0, "OA": 2.0}},
                   "params": {"trainable": 123}, "run": {"selector": None, "k": None},
                   "timing": {"step_s": 0.25, "timed_steps": 2}}
        (out / "metrics.json").write_text(json.dumps(metrics))
        return 0


def test_killed_study_reruns_only_the_rest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = one_protocol_study()
    cells = study.cells()
    first = FakeFit(kill_at=2)
    monkeypatch.setattr(subprocess, "call", first)
    with pytest.raises(KeyboardInterrupt):
        run_cells(cells, tmp_path)
    assert first.calls == ["A/ref/seed0", "A/gated/seed0"]

    second = FakeFit(fail={"A/gated/seed2"})
    monkeypatch.setattr(subprocess, "call", second)
    run_cells(cells, tmp_path)
    assert second.calls == [c.key for c in cells[2:]], "finished cells are never rerun"

    records = [cell_record(c, tmp_path) for c in cells]
    failed = [r for r in records if r["status"] != "done"]
    assert [(r["config"], r["seed"], r["status"]) for r in failed] == [("gated", 2, "failed")]
    assert failed[0]["target_mean_mIoU"] is None and "data folder not found" in failed[0]["error"]
    done = records[0]
    assert done["target_mean_mIoU"] == 30.0 and done["trainable_params"] == 123 and done["step_s"] == 0.25
    assert done["wall_s"] is not None and done["run_dir"] == str(tmp_path / "runs/A/ref/seed0")

    third = FakeFit()
    monkeypatch.setattr(subprocess, "call", third)
    run_cells(cells, tmp_path)
    assert third.calls == ["A/gated/seed2"], "a failed cell is retried, nothing else"


def test_changed_study_does_not_reuse_a_run_made_with_other_settings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "call", FakeFit())
    run_cells(one_protocol_study(seeds=1).cells(), tmp_path)
    changed = one_protocol_study(seeds=1, overrides=["train.max_steps=3"])
    with pytest.raises(UserError, match="made with other settings"):
        run_cells(changed.cells(), tmp_path)


def test_protocols_and_configs_restrict_what_runs_now(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--protocols``/``--configs`` run a subset; the report still lists every cell (the rest as missing)."""
    from crossearth_gate.cli import main

    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(study_dict(seeds=2)))
    fake = FakeFit()
    monkeypatch.setattr(subprocess, "call", fake)
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out), "--protocols", "A", "--configs", "gated"]) == 0
    assert fake.calls == ["A/gated/seed0", "A/gated/seed1"]
    results = json.loads((out / "results.json").read_text())
    status = {(c["protocol"], c["config"], c["seed"]): c["status"] for c in results["cells"]}
    assert status[("A", "gated", 1)] == "done" and status[("A", "ref", 0)] != "done"
    assert status[("B", "gated", 7)] != "done"
    assert main(["study", str(path), "--out", str(out), "--configs", "nope"]) == 2


def test_learning_curves_come_from_cells_validated_often_enough(tmp_path: Path) -> None:
    from crossearth_gate.study.figures import validation_curves, write_figures

    def cell_with_log(config: str, val_steps: list[int]) -> dict:
        run_dir = tmp_path / config
        (run_dir / "logs").mkdir(parents=True)
        rows = ["step,train/loss,val/mIoU"] + [f"{s},,{30 + s / 10}" for s in val_steps] + ["5,1.5,"]
        (run_dir / "logs" / "metrics.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        return {**made_up_cell("A", config, 0, 40.0), "run_dir": str(run_dir)}

    long_run = cell_with_log("long", [25, 50, 75, 100])
    cells = [long_run, cell_with_log("short", [50, 100]), {**made_up_cell("A", "failed", 0, None, "failed"),
                                                          "run_dir": str(tmp_path / "missing")}]
    curves = validation_curves("A", cells)
    assert list(curves) == ["long"] and list(curves["long"]) == [0]
    steps, values = curves["long"][0]
    assert steps.tolist() == [25, 50, 75, 100] and values.tolist() == [32.5, 35.0, 37.5, 40.0]
    assert validation_curves("B", cells) == {}
    summary = aggregate(cells, parse_study(study_dict(), tmp_path / "s.yaml"))
    _, figures = write_figures(summary, cells, tmp_path / "out")
    assert (tmp_path / "out" / "figures" / "learning_curves_A.png") in figures["A"]
    assert not (tmp_path / "out" / "figures" / "confident_share_A.png").exists(), "no DACS cell, no DACS figure"


def test_seed_mean_averages_the_steps_every_seed_logged() -> None:
    from crossearth_gate.study.figures import seed_mean

    seeds = {0: (np.array([50, 100, 150]), np.array([30.0, 40.0, 45.0])),
             1: (np.array([50, 100]), np.array([32.0, 44.0]))}  # seed 1 stopped early
    assert seed_mean(seeds) == ([50, 100], [31.0, 42.0])


def test_dacs_cells_get_a_confidence_figure(tmp_path: Path) -> None:
    from crossearth_gate.study.figures import logged_curves, write_figures

    run_dir = tmp_path / "dacs"
    (run_dir / "logs").mkdir(parents=True)
    rows = ["step,train/loss,dacs/confident_share"] + [f"{s},1.0,{s / 100}" for s in (10, 20, 30)]
    (run_dir / "logs" / "metrics.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    cells = [{**made_up_cell("A", "gated", 0, 40.0), "run_dir": str(run_dir)}]
    steps, share = logged_curves("A", cells, "dacs/confident_share")["gated"][0]
    assert steps.tolist() == [10, 20, 30] and share.tolist() == [0.1, 0.2, 0.3]
    _, figures = write_figures(aggregate(cells, one_protocol_study()), cells, tmp_path / "out")
    assert (tmp_path / "out" / "figures" / "confident_share_A.png") in figures["A"]
