"""DACS self-training in Lightning: the task that mixes source and pseudo-labelled target images, the
resumable target stream it draws from, the pseudo-labelled batches the Fisher gate scores in DA, and
the callback that draws DA's figure.

DA attaches itself: ``fit`` only builds the task (``build_task``); the task finds its target images in
the data module it is trained with (``setup``), answers the gate callback's request for samples
(``gate_samples``) and brings its figure's callback (``configure_callbacks``). The framework-free pieces
(teacher, ClassMix, pseudo-labels, augmentation) live in ``adaptation/``; this module only decides when
they run and keeps their state in the checkpoint.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..adaptation.classmix import classmix_masks, mix, mixed_weights
from ..adaptation.photometric import strong_augment
from ..adaptation.protocol import check_disjoint
from ..adaptation.pseudo import PseudoLabels, Weighted, has_data, pack_targets, pseudo_labels
from ..adaptation.teacher import EMATeacher
from ..config.schema import RunConfig
from ..toolbox.slots import activated
from ..util.errors import UserError
from ..util.seeds import derive_seed
from .losses import fisher_loss, segmentation_loss
from .phases import PhaseClock, timed
from .resume import gather_ranks
from .task import SegmentationTask

log = logging.getLogger(__name__)


class TargetStream:
    """Unlabelled target batches: a fresh seeded permutation per pass, crops drawn from the stream's own RNG.

    Under DDP every rank walks the same permutation and takes its own share of each stretch of
    ``n * world_size`` images (like a distributed sampler), with crops from its own RNG: the ranks see
    different images, and pass and position stay equal on every rank. Its state (pass, position, RNG)
    goes into the checkpoint, so a resumed run sees the same images with the same crops, whatever else
    drew random numbers. Images are read in this process (no workers).
    """

    def __init__(self, dataset: Dataset, seed: int):
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise UserError("the unlabelled target domain has no images")
        self.dataset, self.seed = dataset, seed
        self.epoch, self.position = 0, 0
        self.shard(0, 1)

    def shard(self, rank: int, world_size: int) -> None:
        """Draw this rank's share from now on, with this rank's fresh crop RNG."""
        self.rank, self.world_size = rank, world_size
        self.rng_state = torch.Generator().manual_seed(derive_seed(self.seed, "target_crops", rank=rank)).get_state()

    def _order(self) -> Tensor:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "target_order", index=self.epoch))
        return torch.randperm(len(self.dataset), generator=generator)  # type: ignore[arg-type]

    def next_batch(self, n: int) -> Tensor:
        """This rank's next ``n`` target images (n, 3, crop, crop), wrapping into a new pass as needed."""
        drawn: list[int] = []
        order = self._order()
        while len(drawn) < n * self.world_size:
            if self.position == len(order):
                self.epoch, self.position = self.epoch + 1, 0
                order = self._order()
            drawn.append(int(order[self.position]))
            self.position += 1
        indices = drawn[self.rank :: self.world_size]
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.rng_state)
            images = torch.stack([self.dataset[i]["image"] for i in indices])
            self.rng_state = torch.get_rng_state()
        return images

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "rng_state": self.rng_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position, self.rng_state = int(state["epoch"]), int(state["position"]), state["rng_state"]


_NO_STREAM = "the DACS task has no target images: train it with a data module that has an unlabelled target"


def _unlabelled(datamodule: Any) -> Dataset:
    """The unlabelled target images of a set-up data module."""
    loader = datamodule.unlabelled_dataloader() if datamodule is not None else None
    if loader is None:
        raise RuntimeError(_NO_STREAM)
    return loader.dataset


class DACSTask(SegmentationTask):
    """Loss = CE(source) + λ · mean_j w_j · CE(mixed_j, ClassMix label_j), the EMA teacher updated after every step."""

    def __init__(self, cfg: RunConfig, classes: list[str], palette: list[tuple[int, int, int]],
                 target_names: list[str], sample_dir: Path | None = None, *, clock: PhaseClock | None = None):
        super().__init__(cfg, classes, palette, target_names, sample_dir, clock=clock)
        self.teacher = EMATeacher(self.model, cfg.adaptation.ema_alpha)
        self.mix_rng = torch.Generator()
        self.stream: TargetStream | None = None
        self._saved_ranks: list[dict[str, Any]] | None = None  # from a checkpoint, until training starts

    def setup(self, stage: str) -> None:
        """Training: the unlabelled target images come from the data module it is trained with (set up by
        now). Lightning calls this before a checkpoint is restored, so a resumed stream is put back on it."""
        super().setup(stage)
        if stage == "fit":
            self.attach(_unlabelled(self.trainer.datamodule))

    def attach(self, unlabelled: Dataset) -> None:
        """Give the task its unlabelled target images (``setup`` does, from the data module)."""
        self.stream = TargetStream(unlabelled, derive_seed(self.cfg.train.seed, "target_stream"))

    def gate_samples(self) -> PseudoLabelledFisherData:
        """The gate scores on pseudo-labelled target images (``gate.fisher_data``: target, source or both)."""
        datamodule = self.trainer.datamodule
        return PseudoLabelledFisherData(self.cfg.gate.fisher_data or "target", self, datamodule,
                                        _unlabelled(datamodule))

    def configure_callbacks(self) -> list[L.Callback]:
        return [AdaptationFigures(self.cfg.adaptation.confidence, clock=self.clock)]

    def start_streams(self, rank: int, world_size: int) -> None:
        """This rank's target share and ClassMix RNG; a resumed run then puts back this rank's saved states."""
        if self.stream is None:
            raise RuntimeError(_NO_STREAM)
        self.stream.shard(rank, world_size)
        self.mix_rng.manual_seed(derive_seed(self.cfg.train.seed, "classmix", rank=rank))
        ranks, self._saved_ranks = self._saved_ranks, None
        if ranks is None:
            return
        if len(ranks) == world_size:
            self.stream.load_state_dict(ranks[rank]["stream"])
            self.mix_rng.set_state(ranks[rank]["mix_rng"])
            return
        log.warning("the checkpoint holds target streams of %d ranks, this run has %d: the stream goes on from "
                    "its saved position with fresh crops and mixes", len(ranks), world_size)
        self.stream.epoch, self.stream.position = ranks[0]["stream"]["epoch"], ranks[0]["stream"]["position"]

    def on_train_start(self) -> None:
        self.start_streams(self.trainer.global_rank, self.trainer.world_size)

    @property
    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        info = self.model.backbone.info
        return info.mean, info.std

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if self.stream is None:
            raise RuntimeError(_NO_STREAM)
        a = self.cfg.adaptation
        source, labels = batch["image"], batch["mask"]
        n = source.shape[0]
        target = self.stream.next_batch(n).to(source.device)
        mean, std = self.stats
        pseudo = self._pseudo(target)
        masks = classmix_masks(labels, self.mix_rng)
        mixed = strong_augment(mix(masks, source, target), mean, std, a, self.mix_rng)
        mixed_labels = mix(masks, labels, pseudo.labels)
        weight = mixed_weights(masks, pseudo.weight)  # pasted source pixels 1, target pixels their image's w
        loss_source = segmentation_loss(self.model, self.model.head_outputs(source), labels)
        loss_mixed = segmentation_loss(self.model, self.model.head_outputs(mixed), mixed_labels, weight)
        loss = loss_source + a.mix_weight * loss_mixed
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/loss_source", loss_source, batch_size=n)
        self.log("train/loss_mixed", loss_mixed, batch_size=n)
        self.log("dacs/confidence", pseudo.mean_confidence, batch_size=n)
        self.log("dacs/confident_share", float(pseudo.weight.mean()), batch_size=n)
        self.log("train/active_slots", float(len(self.model.toolbox.active_slots())), batch_size=1)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.teacher.update(self.model)

    def _pseudo(self, images: Tensor) -> PseudoLabels:
        mean, std = self.stats
        probabilities = self.model.head.probabilities(self.teacher.predict(self.model, images))
        return pseudo_labels(probabilities, has_data(images, mean, std), self.cfg.adaptation.confidence)

    def pseudo_label(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher labels (B, H, W) and per-image confidence weights (B,) of target images."""
        pseudo = self._pseudo(images)
        return pseudo.labels, pseudo.weight

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self._saved_ranks is not None:  # saved again before training started: keep what was loaded
            checkpoint["adaptation"] = {"ranks": self._saved_ranks}
            return
        if self.stream is None:
            raise RuntimeError(_NO_STREAM)
        local = {"stream": self.stream.state_dict(), "mix_rng": self.mix_rng.get_state()}
        checkpoint["adaptation"] = {"ranks": gather_ranks(local)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("adaptation")
        if state is None:
            raise UserError("the checkpoint has no adaptation state: it comes from a run without train.adaptation")
        self._saved_ranks = state["ranks"] if "ranks" in state else [state]  # [state]: saved before DDP sharding


def relative_weights(weight: Tensor) -> Tensor:
    """w / mean(w); all ones when every weight is 0."""
    mean = weight.mean()
    return weight / mean if mean > 0 else torch.ones_like(weight)


class PseudoLabelledFisherData:
    """The gate's samples in DA: target images with teacher pseudo-labels and weights, source images, or both.

    ``model`` and ``loss`` are what the gate scores: the segmentor's raw head outputs and the head's loss
    per image, weighted. Targets are packed (labels, weight); source samples
    get weight 1.
    Target weights are taken relative to their mean (``relative_weights``): selection normalises scores
    per type, so a common scale never changes it, and a teacher not yet sure of any pixel (all w = 0)
    still ranks the slots with its pseudo-labels instead of returning all-zero scores.
    With ``both`` the M samples are ceil(M/2) source then floor(M/2) target. The teacher labels with
    the student's active set at the moment the gate asks (not the all-on set it scores with), and
    the draws use their own seeded RNG, so scoring never shifts the training stream.
    """

    def __init__(self, name: str, task: DACSTask, datamodule: Any, unlabelled: Dataset):
        self.name, self.task, self.datamodule, self.unlabelled = name, task, datamodule, unlabelled
        self.model, base = fisher_loss(task.model)
        self.loss = Weighted(base)

    def batches(self, num_samples: int, seed: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
        active = self.task.model.toolbox.active_slots()  # read now: scoring switches every slot on
        n_source = {"source": num_samples, "target": 0, "both": math.ceil(num_samples / 2)}[self.name]
        return self._draw(n_source, num_samples - n_source, seed, device, active)

    def _draw(self, n_source: int, n_target: int, seed: int, device: torch.device,
              active: list[str]) -> Iterator[tuple[Tensor, Tensor]]:
        drawn: list[tuple[Tensor, Tensor]] = []
        with torch.random.fork_rng(devices=[]):  # drawn in full before anything is yielded
            torch.manual_seed(seed)
            if n_source:
                batch = next(iter(self.datamodule.fisher_dataloader(n_source, seed=seed)))
                labels = batch["mask"].to(device)
                drawn.append((batch["image"].to(device), pack_targets(labels, torch.ones(len(labels), device=device))))
            if n_target:
                loader = DataLoader(self.unlabelled, batch_size=n_target, shuffle=True,
                                    generator=torch.Generator().manual_seed(seed))
                images = next(iter(loader))["image"].to(device)
                with activated(self.task.model.toolbox, active):
                    labels, weight = self.task.pseudo_label(images)
                drawn.append((images, pack_targets(labels, relative_weights(weight))))
        yield from drawn


def build_task(cfg: RunConfig, classes: list[str], palette: list[tuple[int, int, int]],
               target_names: list[str], sample_dir: Path | None = None,
               band_kernels: Sequence[int] | None = None, *, clock: PhaseClock | None = None) -> SegmentationTask:
    """The DG task, or the DACS task when ``train.adaptation`` asks for it (the config checked its values and
    that DACS has its unlabelled images; what is left needs the files: no scored image is adapted to).

    ``band_kernels``: the grown patch embedding of data with other channels than R, G, B (DG only); ``clock``:
    fit's phases. The one place ``fit`` meets DA: the DACS task brings the rest itself."""
    if cfg.train.adaptation == "none":
        return SegmentationTask(cfg, classes, palette, target_names, sample_dir, band_kernels, clock=clock)
    if band_kernels is not None:  # its photometric augmentation and padding test assume ImageNet-normalised RGB
        raise UserError(f"train.adaptation={cfg.train.adaptation} needs three channels in R, G, B order; this "
                        f"data has {len(band_kernels)} channel(s) (`bands`, `rgb_bands`)")
    assert cfg.data.unlabelled_target is not None  # RunConfig requires it with dacs
    check_disjoint(cfg.data.unlabelled_target, cfg.data.targets, cfg.adaptation.transductive)
    return DACSTask(cfg, classes, palette, target_names, sample_dir, clock=clock)


PSEUDO_CONFIDENCE_FIGURE = "pseudo_confidence.png"


class AdaptationFigures(L.Callback):
    """When training ends, on global rank zero: the pseudo-label confidence curve beside the gate map, drawn
    from the run folder's log (the trainer's root), timed as fit's artefacts phase."""

    def __init__(self, confidence: float, *, clock: PhaseClock | None = None):
        self.confidence = confidence  # the threshold line
        self.clock = clock

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        with timed(self.clock, "artefacts"):
            self.write(Path(trainer.default_root_dir))

    def write(self, run_dir: Path) -> None:
        from ..runs.plots import plot_pseudo_confidence, read_log_series

        log = run_dir / "logs" / "metrics.csv"
        if log.is_file() and len(read_log_series(log, "dacs/confidence")[0]):  # none before the first log_every
            plot_pseudo_confidence(log, run_dir / PSEUDO_CONFIDENCE_FIGURE, self.confidence)
