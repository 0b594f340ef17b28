"""The paper's 18 settings: every config reads fixtures in its releases' layouts and trains 2 steps end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from benchmark_fixtures import write_benchmark_tree
from crossearth_gate.cli import main
from crossearth_gate.config.schema import load_config
from crossearth_gate.runs.report import load_run
from crossearth_gate.runs.table import collect, load_paper_results

BENCHMARKS = Path(__file__).resolve().parents[1] / "configs" / "benchmarks"
CONFIGS = sorted(p for p in BENCHMARKS.glob("*.yaml") if not p.name.startswith("_"))
CASID_PAIRS = [f"casid_{s}2{t}" for s in ("sub", "tem", "tms", "trf") for t in ("sub", "tem", "tms", "trf") if s != t]
SETTINGS = CASID_PAIRS + ["potsdam_rgb2rescuenet", "potsdam_irrg2rescuenet", "p2v", "v2p", "r2u", "u2r"]

# ViT-L with Mask2Former at 518 shrunk to a width-32, depth-4 ViT and 56-pixel crops: the configs' data,
# classes and gate are what is tested here, not the model's size.
TINY = [
    "model.weights=none",
    "model.backbone_kwargs={embed_dim: 32, depth: 4, num_heads: 2}",
    "model.head=fpn",  # the configs' Mask2Former at this size: test_a_config_trains_with_its_own_head
    "model.head_channels=16",
    "data.crop_size=56",
    "data.batch_size=2",
    "data.num_workers=0",
    "eval.window=56",
    "eval.stride=56",
    "eval.samples_per_domain=0",
    "train.max_steps=2",
    "train.val_every=2",
    "train.warmup_steps=1",
    "train.progress=false",
    "gate.every=2",
    "gate.num_samples=2",
    "gate.k=3",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_benchmark_tree(tmp_path_factory.mktemp("ceg_data"))


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
def test_config_trains_two_steps_on_fixtures(path: Path, data_root: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEG_DATA", str(data_root))
    out = tmp_path / "run"
    assert main(["fit", "--config", str(path), "--out", str(out), *TINY, "train.precision=32-true"]) == 0
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
def test_a_config_trains_with_its_own_head(name: str, data_root: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The configs' Mask2Former (shrunk: 6 queries, 3 decoder layers) trains and tests from a benchmark config."""
    pytest.importorskip("transformers")
    monkeypatch.setenv("CEG_DATA", str(data_root))
    tiny_m2f = ("model.head_kwargs={num_queries: 6, decoder_layers: 3, encoder_layers: 1, num_attention_heads: 2, "
                "dim_feedforward: 32, encoder_feedforward_dim: 32, train_num_points: 256}")
    overrides = [o for o in TINY if not o.startswith(("model.head=", "model.head_channels="))]
    out = tmp_path / "run"
    config = BENCHMARKS / f"{name}.yaml"
    assert main(["fit", "--config", str(config), "--out", str(out), *overrides, "model.head_channels=32",
                 tiny_m2f]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["head"] == "mask2former"
    metrics = json.loads((out / "metrics.json").read_text())
    for target in load_config(str(config)).data.targets:
        assert 0.0 <= metrics["domains"][target]["mIoU"] <= 100.0


def test_a_config_on_a_wrong_tree_fails_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "CASID" / "all_train" / "image").mkdir(parents=True)  # one domain unzipped without its folder
    monkeypatch.setenv("CEG_DATA", str(tmp_path))
    code = main(["fit", "--config", str(BENCHMARKS / "casid_sub2tem.yaml"), "--out", str(tmp_path / "run"), *TINY,
                 "model.head=fpn"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "CASID domain folder not found" in err[0]
