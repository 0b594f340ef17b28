"""The real CLI end to end: fit + test on a tiny ViT over the shipped demo data, artefacts, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from crossearth_gate.cli import main
from support.cli import fit_demo
from support.paths import DEMO
from support.runs import labelled_pixels


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "tiny"
    assert fit_demo(out, "train.max_steps=4") == 0
    return out


def test_fit_writes_every_artefact(tiny_run: Path) -> None:
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert set(metrics["domains"]) == {"source_val", "tile_5"}
    for result in metrics["domains"].values():
        assert {"mIoU", "mF1", "OA", "per_class_iou"} <= set(result)
        assert set(result["per_class_iou"]) == {"land", "water", "building", "vegetation", "road"}
        assert 0.0 <= result["mIoU"] <= 100.0
    params = metrics["params"]
    assert 0 < params["trainable"] < params["total"]
    assert len(params["per_slot"]) == 3 * 4
    assert metrics["backbone"] == {"name": "vit_small_patch14_dinov2", "weights": {
        "requested": "none", "source": "random", "file": None, "sha256": None, "description": "random initialisation",
        "layout": None}}
    assert metrics["domains"]["tile_5"]["pixels"] == labelled_pixels(5)
    assert metrics["run"]["mode"] == "gated-fisher" and metrics["run"]["k"] == 3
    assert len(metrics["run"]["active"]) == 3

    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert config["train"]["max_steps"] == 4 and config["gate"]["k"] == 3

    with safe_open(str(tiny_run / "trainable.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert keys and not any(k.startswith("backbone.") for k in keys), "frozen backbone must not be saved"
    assert {k.split(".")[0] for k in keys} == {"head", "toolbox"}

    gates = json.loads((tiny_run / "gates.json").read_text())
    assert gates["k"] == 3 and gates["selector"] == "fisher"
    assert [s["step"] for s in gates["selections"]] == [0, 2]
    for selection in gates["selections"]:
        assert set(selection) == {"step", "raw", "normalized", "active", "data"}
        assert selection["data"] == "source", "a DG gate scores labelled source images"
        assert len(selection["active"]) == 3 and len(selection["raw"]) == 12
    assert (tiny_run / "gate_map.png").stat().st_size > 0
    assert (tiny_run / "checkpoints" / "last.ckpt").is_file()
    assert (tiny_run / "logs" / "metrics.csv").is_file()
    assert sorted(p.name for p in (tiny_run / "samples").glob("*.png")) == ["source_val_0.png", "tile_5_0.png"]
    assert not list(tiny_run.rglob("*.tmp")), "no temporary files may be left behind"


def test_same_seed_same_selections_and_metrics(tiny_run: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    assert fit_demo(again, "train.max_steps=4") == 0
    first = json.loads((tiny_run / "gates.json").read_text())
    second = json.loads((again / "gates.json").read_text())
    assert first == second
    m1 = json.loads((tiny_run / "metrics.json").read_text())["domains"]
    m2 = json.loads((again / "metrics.json").read_text())["domains"]
    assert m1 == m2


def test_killed_run_resumes_from_last_checkpoint_with_its_gate(tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    assert fit_demo(out, "train.max_steps=2") == 0  # stands in for a run killed after step 2
    before = json.loads((out / "gates.json").read_text())
    assert [s["step"] for s in before["selections"]] == [0]
    assert fit_demo(out, "train.max_steps=4") == 0
    after = json.loads((out / "gates.json").read_text())
    assert after["selections"][0] == before["selections"][0], "history from before the kill is kept"
    assert [s["step"] for s in after["selections"]] == [0, 2]
    rows = (out / "logs" / "metrics.csv").read_text().splitlines()
    assert rows, "training continued and logged"


def test_unknown_config_key_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fit_demo(tmp_path / "bad", "train.lrr=0.1") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "unknown config key config.train.lrr" in errors[0]


def test_missing_data_folder_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    code = fit_demo(tmp_path / "bad", f"data.source.root={missing}")
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error:" in line]
    assert len(errors) == 1 and str(missing) in errors[0] and err[-1] == errors[0]
    assert not any("Traceback" in line for line in err)


def test_only_slots_ever_selected_are_trained_and_saved(tiny_run: Path) -> None:
    """The optimiser moved every selected slot (their zero-initialised parts are no longer zero); slots never
    selected still hold their initial weights, so the saved file leaves them out."""
    from safetensors.torch import load_file

    gates = json.loads((tiny_run / "gates.json").read_text())
    ever_active = {slot for s in gates["selections"] for slot in s["active"]}
    zero_init = {"spatial": ["b_q", "b_v"], "semantic": ["bottleneck.up.weight"],
                 "frequency": ["experts.0.up.weight", "experts.1.up.weight", "experts.2.up.weight"]}
    state = load_file(str(tiny_run / "trainable.safetensors"))
    saved = {".".join(k.split(".")[2:4]) for k in state if k.startswith("toolbox.")}
    assert saved == ever_active
    for slot in ever_active:
        tensors = [state[f"toolbox.slots.{slot}.{name}"] for name in zero_init[slot.split(".")[0]]]
        assert any(t.abs().sum() > 0 for t in tensors), slot
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    params = metrics["params"]
    assert params["trainable"] == params["head"] + sum(params["per_slot"][s] for s in ever_active)


def test_report_on_two_real_runs_names_both(tiny_run: Path, tmp_path: Path) -> None:
    frozen = tmp_path / "frozen"
    assert fit_demo(frozen, "train.max_steps=2", "name=tiny-frozen", "toolbox.types=[]", "gate.enabled=false") == 0
    out = tmp_path / "report"
    assert main(["report", str(tiny_run), str(frozen), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "demo-gated" in report and "tiny-frozen" in report
    figures = {p.name for p in out.glob("*.png")}
    assert any(name.startswith("gate_map") for name in figures)
    assert any(name.startswith("per_class_iou") for name in figures)
    assert any(name.startswith("curves") for name in figures)
    for link in (line.split("](")[1].split(")")[0] for line in report.splitlines() if "](" in line):
        assert (out / link).exists(), f"report links a missing file: {link}"


def test_export_then_predict_from_the_exported_file(tiny_run: Path, tmp_path: Path) -> None:
    exported = tmp_path / "model.safetensors"
    assert main(["export", str(tiny_run), "--out", str(exported)]) == 0
    sidecar = json.loads(exported.with_suffix(".json").read_text())
    assert sidecar["backbone"] == "vit_small_patch14_dinov2"
    assert sidecar["classes"] == ["land", "water", "building", "vegetation", "road"]
    assert sidecar["active"] == json.loads((tiny_run / "metrics.json").read_text())["run"]["active"]
    assert {"toolbox", "palette", "mean", "std", "backbone_kwargs"} <= set(sidecar)
    images = DEMO / "tile_5" / "images"
    image = next(images.glob("*.jpg"))
    out = tmp_path / "pred"
    assert main(["predict", str(image), "--model", str(exported), "--out", str(out)]) == 0
    from PIL import Image

    pred = Image.open(out / f"{image.stem}_pred.png")
    assert pred.mode == "P" and pred.size == Image.open(image).size
