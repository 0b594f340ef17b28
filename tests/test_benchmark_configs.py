"""The shipped benchmark configs: the paper's 18 settings and its backbone ablation. Every config loads and
validates at full size; the 18 (and two of the ablation) train 2 steps end to end on fixtures in their releases'
layouts (the session's ``benchmark_data``), shrunk to tiny.yaml's ``benchmark`` and ``ablation`` runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from crossearth_gate.cli import main
from crossearth_gate.config.schema import load_config
from crossearth_gate.config.validation import check_runtime
from crossearth_gate.model.artefacts import read_spec
from crossearth_gate.runs.report import load_run
from crossearth_gate.runs.table import collect, load_paper_results
from support.paths import BENCHMARKS
from support.tiny import override, tiny_model, tiny_run

CONFIGS = sorted(p for p in BENCHMARKS.glob("*.yaml") if not p.name.startswith("_"))
CASID_PAIRS = [f"casid_{s}2{t}" for s in ("sub", "tem", "tms", "trf") for t in ("sub", "tem", "tms", "trf") if s != t]
SETTINGS = CASID_PAIRS + ["potsdam_rgb2rescuenet", "potsdam_irrg2rescuenet", "p2v", "v2p", "r2u", "u2r"]

def test_there_are_the_papers_18_settings() -> None:
    assert sorted(p.stem for p in CONFIGS) == sorted(SETTINGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_has_the_papers_model(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEG_DATA", "/data")
    cfg = load_config(str(path))
    assert cfg.model.backbone == "vit_large_patch14_dinov2" and cfg.model.head == "mask2former"
    assert cfg.gate.enabled and cfg.gate.selector == "fisher" and cfg.gate.k == 18
    assert cfg.data.crop_size == 518 and set(cfg.toolbox.types) == {"spatial", "semantic", "frequency"}
    assert cfg.data.source.root.startswith("/data/")
    assert cfg.data.crop_size % 14 == 0 and cfg.eval.window % 14 == 0, "ViT/14 takes whole patches only"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_trains_two_steps_on_fixtures(path: Path, benchmark_data: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEG_DATA", str(benchmark_data))
    out = tmp_path / "run"
    assert main(["fit", "--config", str(path), "--out", str(out), *tiny_run("benchmark"),
                 "train.precision=32-true"]) == 0
    cfg = load_config(str(path))
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["domains"]) == {"source_val", *cfg.data.targets}
    for result in metrics["domains"].values():
        assert set(result["per_class_iou"]) == set(cfg.data.source.info.classes)
    recorded = yaml.safe_load((out / "config.yaml").read_text())["data"]
    assert recorded["source"]["domain"] == cfg.data.source.domain, "the table keys runs on the recorded data"
    scores = collect([load_run(out)], load_paper_results())
    assert list(scores.by_setting) == [path.stem], "`crossearth-gate table` puts the run in its setting's row"


@pytest.mark.parametrize("name", ["potsdam_rgb2rescuenet", "p2v"])  # one DG, one DA (DACS) setting
def test_a_config_trains_with_its_own_head(name: str, benchmark_data: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The configs' Mask2Former (shrunk: 6 queries, 3 decoder layers) trains and tests from a benchmark config."""
    pytest.importorskip("transformers")
    monkeypatch.setenv("CEG_DATA", str(benchmark_data))
    out = tmp_path / "run"
    config = BENCHMARKS / f"{name}.yaml"
    assert main(["fit", "--config", str(config), "--out", str(out), *tiny_run("benchmark_mask2former")]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["head"] == "mask2former"
    metrics = json.loads((out / "metrics.json").read_text())
    for target in load_config(str(config)).data.targets:
        assert 0.0 <= metrics["domains"][target]["mIoU"] <= 100.0


def test_a_config_on_a_wrong_tree_fails_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "CASID" / "all_train" / "image").mkdir(parents=True)  # one domain unzipped without its folder
    monkeypatch.setenv("CEG_DATA", str(tmp_path))
    code = main(["fit", "--config", str(BENCHMARKS / "casid_sub2tem.yaml"), "--out", str(tmp_path / "run"),
                 *tiny_run("benchmark"), "model.head=fpn"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "CASID domain folder not found" in err[0]


# ----------------------------------------------------------------------------- the backbone ablation

ABLATION = BENCHMARKS / "backbones"
ABLATION_CONFIGS = sorted(p for p in ABLATION.glob("*.yaml") if not p.name.startswith("_"))
# config -> (timm model, crop, official weights file or the hub, gsd)
ABLATION_EXPECTED = {
    "dinov2_s": ("vit_small_patch14_dinov2", 518, "hub", None),
    "dinov2_b": ("vit_base_patch14_dinov2", 518, "hub", None),
    "dinov2_l": ("vit_large_patch14_dinov2", 518, "hub", None),
    "sam_l": ("samvit_large_patch16", 512, "sam_vit_l_0b3195.pth", None),
    "satmae_l": ("vit_large_patch16_224", 512, "fmow_pretrain.pth", None),
    "scalemae_l": ("vit_large_patch16_224", 512, "scalemae-vitlarge-800.pth", 1.0),
}


def test_one_config_per_backbone_of_the_papers_ablation() -> None:
    assert sorted(p.stem for p in ABLATION_CONFIGS) == sorted(ABLATION_EXPECTED)


@pytest.mark.parametrize("path", ABLATION_CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_validates_at_full_size(path: Path, benchmark_data: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEG_DATA", str(benchmark_data))
    monkeypatch.setenv("CEG_WEIGHTS", str(tmp_path))
    backbone, crop, weights, gsd = ABLATION_EXPECTED[path.stem]
    if weights != "hub":
        (tmp_path / weights).write_bytes(b"")  # validation checks that the file exists; the run reads it
    cfg = load_config(str(path))
    check_runtime(cfg)  # the full-size backbone's skeleton (meta device): patch, depth, crop, window, k
    assert cfg.model.backbone == backbone and cfg.model.gsd == gsd and cfg.data.crop_size == crop
    assert cfg.model.weights == ("hub" if weights == "hub" else str(tmp_path / weights))
    assert cfg.model.head == "mask2former" and set(cfg.toolbox.types) == {"spatial", "semantic", "frequency"}
    assert cfg.gate.enabled and cfg.gate.k == 0.25 and cfg.gate.every == 100 and cfg.train.max_steps == 40000
    assert cfg.data.source.dataset == "casid" and cfg.data.source.domain == "sub"
    assert sorted(cfg.data.targets) == ["tem", "tms", "trf"]
    assert cfg.eval.window == crop and cfg.name == f"ablation-{path.stem.replace('_', '-')}"


TINY_BACKBONES = {"sam_l": "sam", "scalemae_l": "vit"}  # config -> tiny.yaml model


@pytest.mark.parametrize("name", sorted(TINY_BACKBONES))
def test_sam_and_scalemae_configs_train_and_record_their_settings(name: str, benchmark_data: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrunk (width 32, depth 4, 64² crops, FPN head), the config trains 2 steps with the gate on fixtures."""
    monkeypatch.setenv("CEG_DATA", str(benchmark_data))
    out = tmp_path / name
    assert main(["fit", "--config", str(ABLATION / f"{name}.yaml"), "--out", str(out), *tiny_run("ablation"),
                 override("model.backbone_kwargs", tiny_model(TINY_BACKBONES[name]))]) == 0
    recorded = yaml.safe_load((out / "config.yaml").read_text())["model"]
    assert recorded["backbone"] == ABLATION_EXPECTED[name][0] and recorded["gsd"] == ABLATION_EXPECTED[name][3]
    assert read_spec(out / "trainable.safetensors").gsd == ABLATION_EXPECTED[name][3]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["domains"]) == {"source_val", "tem", "tms", "trf"}
    assert metrics["backbone"]["name"] == ABLATION_EXPECTED[name][0]
