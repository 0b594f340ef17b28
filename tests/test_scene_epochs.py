"""A training domain of one large scene fills every batch, and a Fisher selection draws only the samples it scores.

Both were found by the SpaceNet example: its one scene gave one crop per epoch, so `data.batch_size: 4` trained
with batches of one; and every selection decoded the whole training set to score eight images.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from crossearth_gate.config.schema import load_config
from crossearth_gate.data.datasets import SegmentationDataset
from crossearth_gate.training.gate_callback import GateCallback
from crossearth_gate.training.run import build_datamodule
from support.rasters import buildings, scene_pair, write_config

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _datamodule(tmp_path: Path, scenes: int, batch_size: int) -> object:
    for i in range(scenes):
        scene_pair(tmp_path, f"s{i}", seed=i, size=96)
    domain = {"dataset": buildings(bands=[1, 1, 1]), "root": str(tmp_path)}
    config = write_config(tmp_path / "own.yaml", domain, {"same": domain}, val_fraction=0.0, crop_size=28,
                          batch_size=batch_size)
    datamodule = build_datamodule(load_config(str(config)), *IMAGENET)
    datamodule.setup("fit")
    return datamodule


def test_one_scene_fills_a_batch_with_independent_crops(tmp_path: Path) -> None:
    datamodule = _datamodule(tmp_path, scenes=1, batch_size=4)
    torch.manual_seed(0)
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape[0] == 4, "one scene, batch_size 4: four crops, not one"
    crops = batch["image"].flatten(1)
    assert len({tuple(c.tolist()) for c in crops}) == 4, "each crop is its own random window"
    assert len(datamodule.train_dataloader()) == 1  # an epoch is one batch of the one scene
    assert len(datamodule.test_dataloader()[0].dataset) == 1, "evaluation still reads each scene once"


def test_a_fisher_selection_draws_only_what_it_scores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datamodule = _datamodule(tmp_path, scenes=6, batch_size=2)
    reads: list[int] = []
    original = SegmentationDataset.__getitem__

    def counted(self: SegmentationDataset, index: int) -> dict:
        reads.append(index)
        return original(self, index)

    monkeypatch.setattr(SegmentationDataset, "__getitem__", counted)
    # 3 of 6 scenes: one batch of 3; 8 of 6: a second pass over the 6 (the loader yields whole batches)
    for num_samples, expected in ((3, 3), (8, 12)):
        reads.clear()
        gate = SimpleNamespace(datamodule=datamodule, num_samples=num_samples)
        drawn = list(GateCallback._source_batches(gate, seed=5, device=torch.device("cpu")))  # type: ignore[arg-type]
        assert sum(len(images) for images, _ in drawn) >= num_samples
        assert len(reads) == expected, f"{len(reads)} samples decoded to score {num_samples}"
