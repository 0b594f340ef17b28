"""The Mask2Former head (transformers' parts on a tiny ViT): shapes, loss, marginalisation, gate, artefacts."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from crossearth_gate.cli import main
from crossearth_gate.config.schema import GateConfig, load_config
from crossearth_gate.gating import slot_fisher
from crossearth_gate.heads import build_head
from crossearth_gate.heads.mask2former import MaskPredictions, semantic_targets
from crossearth_gate.model.artefacts import load_trainable, save_trainable, spec_of
from crossearth_gate.model.backbone import build_backbone
from crossearth_gate.model.segmentor import HeadOutputs, Segmentor
from crossearth_gate.toolbox.slots import ToolboxConfig
from crossearth_gate.training.gate_callback import GateCallback
from crossearth_gate.training.losses import fisher_loss, segmentation_loss
from crossearth_gate.util.errors import UserError
from support.cli import fit_argv
from support.models import perturb, tiny_backbone
from support.paths import DEMO, REPO
from support.tiny import override, tiny_model

NUM_CLASSES = 3
CHANNELS = 32
HEAD_KWARGS = tiny_model("mask2former")
SIZE = 56  # tiny dinov2: patch 14, so a 4x4 grid and mask logits at 16x16


def tiny_segmentor(seed: int = 0) -> Segmentor:
    torch.manual_seed(seed)
    model = Segmentor(tiny_backbone("dinov2"), NUM_CLASSES, ToolboxConfig(), "mask2former", CHANNELS,
                      head_kwargs=HEAD_KWARGS)
    perturb(model.toolbox, seed=seed + 1)
    return model


def fixture(batch: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class is readable from them (bright left half = class 1, ...) and labels with some 255."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, SIZE, SIZE, generator=gen) * 0.1
    masks = torch.zeros(batch, SIZE, SIZE, dtype=torch.long)
    masks[:, :, : SIZE // 2] = 1
    masks[:, SIZE // 2 :, SIZE // 2 :] = 2
    images[:, 0, :, : SIZE // 2] += 1.0
    images[:, 1, SIZE // 2 :, SIZE // 2 :] += 1.0
    masks[:, :4] = 255
    return images, masks


def test_shapes() -> None:
    model = tiny_segmentor().eval()
    images, _ = fixture(2)
    with torch.no_grad():
        outputs = model.head_outputs(images)
        scores = model(images)
    assert len(outputs.class_logits) == len(outputs.mask_logits) == HEAD_KWARGS["decoder_layers"]
    for classes, masks in zip(outputs.class_logits, outputs.mask_logits, strict=True):
        assert classes.shape == (2, HEAD_KWARGS["num_queries"], NUM_CLASSES + 1)
        assert masks.shape == (2, HEAD_KWARGS["num_queries"], 16, 16)  # 4x the 4x4 patch grid: stride p/4
    assert scores.shape == (2, NUM_CLASSES, SIZE, SIZE)
    assert (scores >= 0).all() and (scores <= HEAD_KWARGS["num_queries"]).all()


def test_semantic_inference_is_the_hand_computed_class_times_mask_marginal() -> None:
    head = build_head("mask2former", 8, 4, 2, CHANNELS, HEAD_KWARGS)
    # 2 queries, 2 classes + no-object; softmax rows [.2, .6, .2] and [.5, .25, .25]
    classes = torch.log(torch.tensor([[[1.0, 3.0, 1.0], [2.0, 1.0, 1.0]]]))
    # two pixels: sigmoid 0.5 / 0.25 for query 0, 0.75 / 0.5 for query 1
    masks = torch.tensor([[[[0.0, math.log(1 / 3)]], [[math.log(3), 0.0]]]])
    scores = head.scores(MaskPredictions((classes,), (masks,)), (1, 2))
    expected = torch.tensor([[[[0.2 * 0.5 + 0.5 * 0.75, 0.2 * 0.25 + 0.5 * 0.5]],
                              [[0.6 * 0.5 + 0.25 * 0.75, 0.6 * 0.25 + 0.25 * 0.5]]]])
    torch.testing.assert_close(scores, expected)
    assert scores.argmax(1).tolist() == [[[1, 0]]]


def test_targets_are_one_mask_per_present_class_and_ignore_255() -> None:
    label = torch.tensor([[[2, 2, 255], [0, 255, 2]], [[255, 255, 255], [255, 255, 255]]])
    masks, classes = semantic_targets(label)
    assert classes[0].tolist() == [0, 2]
    assert masks[0].tolist() == [[[0, 0, 0], [1, 0, 0]], [[1, 1, 0], [0, 0, 1]]]
    assert classes[1].numel() == 0 and masks[1].shape == (0, 2, 3)


def test_loss_decreases_over_20_steps() -> None:
    model = tiny_segmentor()
    images, masks = fixture(2)
    params = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
    optimiser = torch.optim.AdamW(params, lr=3e-3)
    torch.manual_seed(0)
    losses = []
    for _ in range(20):
        loss = segmentation_loss(model, model.head_outputs(images), masks)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])


def test_per_sample_loss_is_the_loss_of_a_batch_of_one() -> None:
    model = tiny_segmentor().eval()
    images, masks = fixture(3)
    masks[2] = 255  # an image without any label still has its class loss (every query: no object)
    head = model.head
    with torch.no_grad():
        outputs = model.head_outputs(images)
        torch.manual_seed(7)  # matching and the mask losses sample random points
        per_sample = head.per_sample_loss(outputs, masks)
        torch.manual_seed(7)
        alone = torch.stack([head.loss(model.head_outputs(images[i : i + 1]), masks[i : i + 1]) for i in range(3)])
    assert per_sample.shape == (3,)
    torch.testing.assert_close(per_sample, alone, atol=1e-5, rtol=1e-5)
    assert (per_sample > 0).all()


def test_the_gate_scores_slots_with_the_mask2former_loss() -> None:
    model = tiny_segmentor()
    images, masks = fixture(3)
    scored, loss = fisher_loss(model)
    assert isinstance(scored, HeadOutputs) and loss == model.head.per_sample_loss
    raw = slot_fisher(scored, model.toolbox, [(images, masks)], loss, num_samples=3).raw
    assert set(raw) == set(model.toolbox.slot_names)
    assert all(math.isfinite(v) and v >= 0 for v in raw.values()) and max(raw.values()) > 0


def test_vmap_fisher_is_refused_with_one_line() -> None:
    task = SimpleNamespace(model=tiny_segmentor())
    with pytest.raises(UserError, match="vmap"):
        GateCallback(GateConfig(k=0.25, every=10, num_samples=2, fisher_method="vmap"), task, seed=0)


def saved_model(tmp_path: Path) -> Path:
    """``test_vit`` (timm's registered tiny ViT, patch 16) + a tiny Mask2Former, rebuilt from its spec by name."""
    torch.manual_seed(0)
    model = Segmentor(build_backbone("test_vit", "none", 32), NUM_CLASSES, ToolboxConfig(), "mask2former", CHANNELS,
                      head_kwargs=HEAD_KWARGS)
    perturb(model.toolbox, seed=2)
    perturb(model.head, seed=3, std=0.01)
    model.toolbox.set_active(["spatial.0", "semantic.2", "frequency.5"])
    spec = spec_of(model, ["a", "b", "c"], [[0, 0, 0], [255, 0, 0], [0, 255, 0]], 0, 32, "mask2former", CHANNELS)
    path = save_trainable(tmp_path / "trainable.safetensors", model, spec)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    torch.save({"images": images, "scores": model.eval()(images).detach()}, tmp_path / "expected.pt")
    return path


def test_save_load_gives_identical_scores(tmp_path: Path) -> None:
    path = saved_model(tmp_path)
    loaded, spec = load_trainable(path)
    assert spec.head == "mask2former" and spec.head_kwargs == HEAD_KWARGS
    expected = torch.load(tmp_path / "expected.pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(expected["images"]), expected["scores"], atol=0, rtol=0)


def test_predict_runs_with_it(tmp_path: Path) -> None:
    path = saved_model(tmp_path)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    assert main(["predict", str(tmp_path / "x.png"), "-m", str(path), "-o", str(tmp_path / "out")]) == 0
    with Image.open(tmp_path / "out" / "x_pred.png") as im:
        classes = np.array(im)
    assert classes.shape == (40, 50) and (classes < NUM_CLASSES).all()


def test_bad_options_and_missing_transformers_are_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="unknown mask2former option 'queries'"):
        build_head("mask2former", 8, 4, 2, CHANNELS, {"queries": 3})
    with pytest.raises(UserError, match="multiple of 32"):
        build_head("mask2former", 8, 4, 2, 48, HEAD_KWARGS)
    with pytest.raises(UserError, match="needs 4 feature levels"):
        build_head("mask2former", 8, 3, 2, CHANNELS, HEAD_KWARGS)
    with pytest.raises(UserError, match="unknown fpn option"):
        build_head("fpn", 8, 4, 2, CHANNELS, HEAD_KWARGS)
    with pytest.raises(UserError, match=r"fuse_kernel is an option of the fpn head.*model.head_kwargs=\{\}"):
        build_head("mask2former", 8, 4, 2, CHANNELS, {"fuse_kernel": 1})
    monkeypatch.delitem(sys.modules, "crossearth_gate.heads.mask2former")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(UserError, match=r"pip install crossearth-gate\[mask2former\]"):
        build_head("mask2former", 8, 4, 2, CHANNELS, HEAD_KWARGS)


def test_the_shipped_demo_config_asks_for_it() -> None:
    cfg = load_config(str(REPO / "configs" / "baselines" / "mask2former.yaml"))
    assert cfg.model.head == "mask2former" and cfg.model.head_kwargs["num_queries"] >= 6


@pytest.mark.slow
def test_fit_resume_export_predict_end_to_end(tmp_path: Path) -> None:
    """The CLI trains it (gate scoring with its loss), resumes from its checkpoint, exports and predicts."""
    out = tmp_path / "run"
    head = ["model.head=mask2former", f"model.head_channels={CHANNELS}",
            override("model.head_kwargs", HEAD_KWARGS)]
    fit = fit_argv(out, *head)
    assert main([*fit, "train.max_steps=2"]) == 0
    assert main([*fit, "train.max_steps=3"]) == 0  # resumes from checkpoints/last.ckpt
    gates = (out / "gates.json").read_text()
    assert '"step": 2' in gates
    exported = tmp_path / "model.safetensors"
    assert main(["export", str(out), "--out", str(exported)]) == 0
    image = next((DEMO / "tile_5" / "images").glob("*.jpg"))
    assert main(["predict", str(image), "--model", str(exported), "--out", str(tmp_path / "pred")]) == 0
    with Image.open(tmp_path / "pred" / f"{image.stem}_pred.png") as pred, Image.open(image) as source:
        assert pred.size == source.size and (np.array(pred) < 6).all()
