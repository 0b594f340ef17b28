"""The backbone ablation as configs: one per backbone, each loads and validates at full size; two train on fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from benchmark_fixtures import write_benchmark_tree
from crossearth_gate.cli import main
from crossearth_gate.config.schema import load_config
from crossearth_gate.config.validation import check_runtime
from crossearth_gate.model.artefacts import read_spec

ABLATION = Path(__file__).resolve().parents[1] / "configs" / "benchmarks" / "backbones"
CONFIGS = sorted(p for p in ABLATION.glob("*.yaml") if not p.name.startswith("_"))
# config -> (timm model, crop, official weights file or the hub, gsd)
EXPECTED = {
    "dinov2_s": ("vit_small_patch14_dinov2", 518, "hub", None),
    "dinov2_b": ("vit_base_patch14_dinov2", 518, "hub", None),
    "dinov2_l": ("vit_large_patch14_dinov2", 518, "hub", None),
    "sam_l": ("samvit_large_patch16", 512, "sam_vit_l_0b3195.pth", None),
    "satmae_l": ("vit_large_patch16_224", 512, "fmow_pretrain.pth", None),
    "scalemae_l": ("vit_large_patch16_224", 512, "scalemae-vitlarge-800.pth", 1.0),
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_benchmark_tree(tmp_path_factory.mktemp("ceg_data"))


def test_one_config_per_backbone_of_the_papers_ablation() -> None:
    assert sorted(p.stem for p in CONFIGS) == sorted(EXPECTED)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_validates_at_full_size(path: Path, data_root: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEG_DATA", str(data_root))
    monkeypatch.setenv("CEG_WEIGHTS", str(tmp_path))
    backbone, crop, weights, gsd = EXPECTED[path.stem]
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


TINY = ["model.weights=none", "model.head=fpn", "model.head_channels=16", "data.crop_size=64", "data.batch_size=2",
        "data.num_workers=0", "eval.window=64", "eval.stride=64", "eval.samples_per_domain=0", "train.max_steps=2",
        "train.val_every=2", "train.warmup_steps=1", "train.progress=false", "gate.every=2", "gate.num_samples=2"]
TINY_BACKBONES = {
    "sam_l": "model.backbone_kwargs={img_size: 64, embed_dim: 32, depth: 4, num_heads: 2, window_size: 2, "
             "global_attn_indexes: [1, 3], neck_chans: 16}",
    "scalemae_l": "model.backbone_kwargs={embed_dim: 32, depth: 4, num_heads: 2}",
}


@pytest.mark.parametrize("name", sorted(TINY_BACKBONES))
def test_sam_and_scalemae_configs_train_and_record_their_settings(name: str, data_root: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrunk (width 32, depth 4, 64² crops, FPN head), the config trains 2 steps with the gate on fixtures."""
    monkeypatch.setenv("CEG_DATA", str(data_root))
    out = tmp_path / name
    assert main(["fit", "--config", str(ABLATION / f"{name}.yaml"), "--out", str(out), *TINY,
                 TINY_BACKBONES[name]]) == 0
    recorded = yaml.safe_load((out / "config.yaml").read_text())["model"]
    assert recorded["backbone"] == EXPECTED[name][0] and recorded["gsd"] == EXPECTED[name][3]
    assert read_spec(out / "trainable.safetensors").gsd == EXPECTED[name][3]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["domains"]) == {"source_val", "tem", "tms", "trf"}
    assert metrics["backbone"]["name"] == EXPECTED[name][0]
