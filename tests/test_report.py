"""Report layer: figures and tables from fake run artefacts, no training code involved."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from crossearth_gate.runs.plots import activation_frequency, mean_normalized_score, overlay
from crossearth_gate.runs.report import write_report
from crossearth_gate.util.errors import UserError

CLASSES = ["background", "building", "road"]
LAYERS = 4


def _metrics(name: str, mode: str, selector: str | None, k: int | None, mious: dict[str, float]) -> dict:
    domains = {
        d: {"mIoU": v, "mF1": v + 10, "OA": v + 20,
            "per_class_iou": {c: (None if c == "road" and d == "source_val" else v + i) for i, c in
                              enumerate(CLASSES)}}
        for d, v in mious.items()
    }
    return {
        "domains": domains,
        "params": {"trainable": 1_234_567, "total": 22_000_000, "per_slot": {"spatial.0": 1000}},
        "backbone": {"name": "vit_small_patch14_dinov2", "weights": "none"},
        "run": {"name": name, "mode": mode, "selector": selector, "k": k},
    }


def _selection(step: int, active: list[str]) -> dict:
    slots = [f"{t}.{i}" for t in ("spatial", "semantic", "frequency") for i in range(LAYERS)]
    raw = {s: float(n + 1) for n, s in enumerate(slots)}
    return {"step": step, "raw": raw, "normalized": {s: 1.0 / LAYERS for s in slots}, "active": active}


def _write_png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 120, dtype=np.uint8)).save(path)


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    gated, frozen = tmp_path / "run_gated", tmp_path / "run_frozen"
    for d in (gated, frozen):
        d.mkdir()
    mious_g = {"source_val": 70.0, "zeta": 50.0, "alpha": 40.0}
    mious_f = {"source_val": 65.0, "zeta": 45.0, "alpha": 30.0}
    (gated / "metrics.json").write_text(json.dumps(_metrics("gate_k3", "all", "fisher", 3, mious_g)))
    (frozen / "metrics.json").write_text(json.dumps(_metrics("frozen", "frozen", None, None, mious_f)))
    (gated / "config.yaml").write_text(yaml.safe_dump({"name": "gate_k3", "gate": {"k": 3}}))
    gates = {"k": 3, "selector": "fisher", "selections": [
        _selection(0, ["spatial.0", "semantic.1", "frequency.3"]),
        _selection(100, ["spatial.0", "semantic.2", "frequency.3"]),
    ]}
    (gated / "gates.json").write_text(json.dumps(gates))
    (gated / "logs").mkdir()
    rows = ["step,epoch,train/loss,val/mIoU"]
    rows += [f"{s},0,{2.0 / (1 + s / 10):.4f}," for s in range(0, 200, 5)]
    rows += [f"{s},0,,{30 + s / 10}" for s in (50, 100, 150)]
    (gated / "logs" / "metrics.csv").write_text("\n".join(rows) + "\n")
    for name in ("alpha_0.png", "alpha_1.png", "zeta_0.png"):
        _write_png(gated / "samples" / name)
    return [gated, frozen]


def test_activation_frequency_counts_active_selections() -> None:
    gates = {"k": 2, "selections": [
        {"step": 0, "active": ["spatial.0", "frequency.1"]},
        {"step": 50, "active": ["spatial.0", "semantic.1"]},
        {"step": 100, "active": ["semantic.1", "frequency.1"]},
        {"step": 150, "active": ["spatial.0", "frequency.1"]},
    ]}
    expected = np.array([[3 / 4, 0.0, 0.0],
                         [0.0, 2 / 4, 3 / 4]])
    np.testing.assert_allclose(activation_frequency(gates), expected)
    assert activation_frequency(gates, num_layers=3).shape == (3, 3)


def test_mean_normalized_score_leaves_unscored_slots_empty() -> None:
    gates = {"selections": [
        {"normalized": {"spatial.0": 0.2, "spatial.1": 0.8}, "active": []},
        {"normalized": {"spatial.0": 0.4, "spatial.1": 0.6}, "active": []},
    ]}
    score = mean_normalized_score(gates)
    np.testing.assert_allclose(score[:, 0], [0.3, 0.7])
    assert np.isnan(score[:, 1:]).all()


def test_write_report_end_to_end(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    report = write_report(runs, out)
    text = report.read_text()

    expected = ["per_class_iou_alpha.png", "per_class_iou_zeta.png", "gate_map_gate_k3.png",
                "curves_gate_k3.png"]
    for name in expected:
        with Image.open(out / name) as im:
            im.verify()
            assert im.format == "PNG"
    assert not (out / "per_class_iou_source_val.png").exists()
    assert not (out / "gate_map_frozen.png").exists() and not (out / "curves_frozen.png").exists()
    assert sorted(p.name for p in (out / "samples" / "gate_k3").iterdir()) == [
        "alpha_0.png", "alpha_1.png", "zeta_0.png"]

    assert "gate_k3" in text and "frozen" in text
    pngs = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    links = set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text))
    assert links == pngs

    summary = json.loads((out / "summary.json").read_text())
    assert summary["domains"] == ["source_val", "alpha", "zeta"]
    by_name = {r["name"]: r for r in summary["runs"]}
    assert by_name["gate_k3"]["mIoU"] == {"source_val": 70.0, "alpha": 40.0, "zeta": 50.0}
    assert by_name["gate_k3"]["target_mean_mIoU"] == pytest.approx((40.0 + 50.0) / 2)
    assert by_name["frozen"]["target_mean_mIoU"] == pytest.approx((30.0 + 45.0) / 2)

    table = (out / "runs_table.md").read_text().splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[5:9] == ["mIoU source_val", "mIoU alpha", "mIoU zeta", "mIoU target mean"]
    row = {r[0]: r for r in ([c.strip() for c in line.strip("|").split("|")] for line in table[2:])}
    assert row["gate_k3"][1:9] == ["all", "fisher", "3", "1.23 M", "70.00", "40.00", "50.00", "45.00"]
    assert row["frozen"][2:4] == ["–", "–"]
    assert row["frozen"][8] == "37.50"
    assert row["frozen"][9:] == ["75.00", "40.00", "55.00"]


def test_colliding_run_names_are_made_unique(runs: list[Path], tmp_path: Path) -> None:
    metrics = json.loads((runs[1] / "metrics.json").read_text())
    metrics["run"]["name"] = "gate_k3"
    (runs[1] / "metrics.json").write_text(json.dumps(metrics))
    write_report(runs, tmp_path / "out")
    names = [r["name"] for r in json.loads((tmp_path / "out" / "summary.json").read_text())["runs"]]
    assert names == ["gate_k3", "gate_k3-2"]


def test_a_da_run_shows_its_teacher_confidence(runs: list[Path], tmp_path: Path) -> None:
    """Drawn from the run's log with the run's own τ; a DG run (no train.adaptation) gets no such figure."""
    gated = runs[0]
    config = {"name": "gate_k3", "train": {"adaptation": "dacs"}, "adaptation": {"confidence": 0.9}}
    (gated / "config.yaml").write_text(yaml.safe_dump(config))
    rows = ["step,train/loss,dacs/confidence,dacs/confident_share"]
    rows += [f"{s},1.0,{0.5 + s / 400:.3f},{s / 200:.3f}" for s in range(0, 200, 10)]
    (gated / "logs" / "metrics.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "report"
    text = write_report(runs, out).read_text()
    with Image.open(out / "pseudo_confidence_gate_k3.png") as im:
        im.verify()
    assert "](pseudo_confidence_gate_k3.png)" in text
    assert not (out / "pseudo_confidence_frozen.png").exists()

    config["train"]["adaptation"] = "none"
    (gated / "config.yaml").write_text(yaml.safe_dump(config))
    write_report(runs, tmp_path / "report_dg")
    assert not list((tmp_path / "report_dg").glob("pseudo_confidence_*.png"))


def test_missing_metrics_json_is_a_user_error(runs: list[Path], tmp_path: Path) -> None:
    (runs[1] / "metrics.json").unlink()
    with pytest.raises(UserError, match="metrics.json"):
        write_report(runs, tmp_path / "out")


def test_overlay_keeps_ignored_pixels() -> None:
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    mask = np.array([[0, 1], [255, 1]], dtype=np.uint8)
    out = overlay(image, mask, [(0, 0, 0), (200, 0, 0)], alpha=0.5)
    assert out[1, 0].tolist() == [100, 100, 100]
    assert out[0, 0].tolist() == [50, 50, 50]
    assert out[0, 1].tolist() == [150, 50, 50]
