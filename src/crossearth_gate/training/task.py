"""The Lightning task: loss, optimiser, per-domain metrics. When to gate is the gate callback's business."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from ..config.schema import RunConfig
from ..data.datamodule import check_channels, other_domains
from ..data.radiometry import Radiometry, display_rgb
from ..model.artefacts import build_seeded_backbone
from ..model.bands import band_state, kernel_map
from ..model.inference import sliding_window_logits
from ..model.segmentor import Segmentor
from ..util.errors import UserError
from .losses import segmentation_loss
from .metrics import SegMetrics
from .phases import PhaseClock, timed
from .schedule import warmup_poly

if TYPE_CHECKING:
    from .gate_callback import FisherData

SOURCE_VAL = "source_val"


def input_kernels(cfg: RunConfig) -> tuple[int, ...] | None:
    """The patch embedding the run's data needs, from its dataset definitions alone (before any file is read):
    None for R, G, B in that order (the backbone's own), else every channel's kernel (model/bands.py)."""
    d = cfg.data
    channels, rgb = check_channels(d.source, other_domains(d.targets, d.val, d.unlabelled_target))
    if d.source.info.plain_rgb:
        return None
    return kernel_map(channels, [c - 1 for c in rgb])


def build_segmentor(cfg: RunConfig, num_classes: int, band_kernels: Sequence[int] | None = None) -> Segmentor:
    """``band_kernels``: for data with other than R, G, B channels (model/bands.py ``kernel_map``)."""
    m = cfg.model
    backbone = build_seeded_backbone(
        m.backbone, m.weights, cfg.data.crop_size, m.out_indices, cfg.train.seed, m.backbone_kwargs, m.gsd
    )
    return Segmentor(backbone, num_classes, cfg.toolbox, m.head, m.head_channels, m.finetune_backbone, m.head_kwargs,
                     band_kernels, cfg.train.class_weights)


class SegmentationTask(L.LightningModule):
    """Trains head + toolbox on the source; evaluates each named domain with one confusion matrix."""

    def __init__(self, cfg: RunConfig, classes: list[str], palette: list[tuple[int, int, int]],
                 target_names: list[str], sample_dir: Path | None = None,
                 band_kernels: Sequence[int] | None = None, *, clock: PhaseClock | None = None):
        """``band_kernels``: the grown patch embedding of data with other channels than R, G, B
        (``input_kernels``); None: the backbone's own. ``clock``: fit's phases, the samples' drawing is
        timed apart from the test (None: not timed)."""
        super().__init__()
        self.cfg = cfg
        self.classes = list(classes)
        self.palette = [tuple(c) for c in palette]
        self.target_names = list(target_names)
        weights = cfg.train.class_weights
        if weights is not None and (len(weights) != len(classes) or min(weights) < 0 or max(weights) <= 0):
            raise UserError(f"config train.class_weights: one weight >= 0 per class ({len(classes)}: "
                            f"{', '.join(classes)}), not all 0, got {weights}")
        self.model = build_segmentor(cfg, len(classes), band_kernels)
        if not self.cfg.toolbox.types:
            self.model.toolbox.set_active([])
        self.val_metrics = SegMetrics(len(classes), self.classes)
        self.test_metrics = nn.ModuleList(SegMetrics(len(classes), self.classes) for _ in target_names)
        self.test_results: dict[str, dict[str, Any]] = {}
        self.sample_dir = sample_dir  # where the test writes a few predictions per domain (None: nowhere)
        self.radiometry: Radiometry | None = None  # the data's, for showing samples (None: the backbone's ImageNet)
        self._samples_saved: dict[int, int] = {}
        self.clock = clock

    def setup(self, stage: str) -> None:
        """The data module it is trained with (its setup has run) gives the radiometry the samples are shown in."""
        datamodule = self.trainer.datamodule
        if datamodule is not None:
            self.radiometry = datamodule.radiometry

    def gate_samples(self) -> FisherData | None:
        """What the gate scores slots on, asked by the gate callback when training starts: None, the labelled
        source samples of the data module (DG); DA's task answers with its pseudo-labelled ones."""
        return None

    # ---------------------------------------------------------------- forward / evaluation
    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def predict_logits(self, image: Tensor) -> Tensor:
        """Sliding-window logits (C, H, W) of one normalised image of any size."""
        e = self.cfg.eval
        window = e.window or self.cfg.data.crop_size
        stride = e.stride or max(1, window * 2 // 3)
        return sliding_window_logits(self.model, image, window, stride, len(self.classes), e.batch_size, e.blend)

    def _evaluate(self, batch: dict[str, Any], metric: SegMetrics) -> Tensor:
        preds = torch.stack([self.predict_logits(img).argmax(0) for img in batch["image"]])
        metric.update(preds, batch["mask"])
        return preds

    # ---------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss = self.loss(batch["image"], batch["mask"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        self.log("train/active_slots", float(len(self.model.toolbox.active_slots())), batch_size=1)
        return loss

    def loss(self, images: Tensor, masks: Tensor) -> Tensor:
        """The training loss: the head's own (``train.class_weights`` weight the FPN head's cross-entropy)."""
        return segmentation_loss(self.model, self.model.head_outputs(images), masks)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Inactive slots must not move: drop any gradient (e.g. zeros filled in by DDP) before the step."""
        active = set(self.model.toolbox.active_slots())
        for name in self.model.toolbox.slot_names:
            if name not in active:
                for p in self.model.toolbox.slot_parameters(name):
                    p.grad = None

    def configure_optimizers(self) -> dict[str, Any]:
        t = self.cfg.train
        params = [p for n, p in self.model.named_parameters() if not n.startswith("backbone.")]
        finetune = self.model.backbone.finetune  # else only what trains in it: new bands' kernels
        params += [p for p in self.model.backbone.parameters() if finetune or p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
        scheduler = warmup_poly(optimizer, t.warmup_steps, t.max_steps, t.poly_power)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---------------------------------------------------------------- validation on held-out SOURCE data
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.val_metrics.reset()
            return
        result = self.val_metrics.compute()
        self.val_metrics.reset()
        self.log("val/mIoU", result["mIoU"], prog_bar=True, sync_dist=False)
        self.log("val/mF1", result["mF1"], sync_dist=False)

    # ---------------------------------------------------------------- test on named domains
    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        preds = self._evaluate(batch, self.test_metrics[dataloader_idx])
        self._maybe_save_samples(batch, preds, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        for name, metric in zip(self.target_names, self.test_metrics, strict=True):
            result = metric.compute()
            metric.reset()
            self.test_results[name] = result
            for key in ("mIoU", "mF1", "OA"):
                self.log(f"test/{name}/{key}", result[key], sync_dist=False)

    def _maybe_save_samples(self, batch: dict[str, Any], preds: Tensor, dataloader_idx: int) -> None:
        if self.sample_dir is None or self.global_rank != 0:
            return
        with timed(self.clock, "test samples"):
            self._save_samples(batch, preds, dataloader_idx)

    def _save_samples(self, batch: dict[str, Any], preds: Tensor, dataloader_idx: int) -> None:
        from PIL import Image

        from ..runs.plots import overlay
        from ..util.atomic import atomic_write

        limit = self.cfg.eval.samples_per_domain
        for image, pred in zip(batch["image"], preds, strict=True):
            done = self._samples_saved.get(dataloader_idx, 0)
            if done >= limit:
                return
            if self.radiometry is None:
                rgb = denormalize(image, self.model.backbone.info.mean, self.model.backbone.info.std)
            else:
                rgb = display_rgb(image, self.radiometry)
            picture = overlay(rgb, pred.cpu().numpy().astype(np.uint8), self.palette)
            path = self.sample_dir / f"{self.target_names[dataloader_idx]}_{done}.png"
            atomic_write(path, lambda tmp, pic=picture: Image.fromarray(pic).save(tmp, format="PNG"))
            self._samples_saved[dataloader_idx] = done + 1

    # ---------------------------------------------------------------- checkpoints without the frozen backbone
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["active_slots"] = self.model.toolbox.active_slots()
        if not self.model.backbone.finetune:
            state = checkpoint["state_dict"]
            trained = set(band_state(self.model.backbone.vit, "model.backbone.vit."))  # new bands' kernels train
            for key in [k for k in state if k.startswith("model.backbone.") and k not in trained]:
                del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Weights and active set travel together: a best checkpoint from an earlier selection stays exact."""
        if "active_slots" in checkpoint:
            self.model.toolbox.set_active(checkpoint["active_slots"])
        state = checkpoint["state_dict"]
        for key, value in self.state_dict().items():
            if key.startswith("model.backbone.") and key not in state:
                state[key] = value


def denormalize(image: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Normalised (3, H, W) tensor → displayable uint8 (H, W, 3)."""
    m = torch.tensor(mean, device=image.device).view(3, 1, 1)
    s = torch.tensor(std, device=image.device).view(3, 1, 1)
    rgb = ((image * s + m).clamp(0, 1) * 255).round().byte()
    return rgb.permute(1, 2, 0).cpu().numpy()
