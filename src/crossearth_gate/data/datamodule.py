"""Source/target loaders for one domain-generalisation run; target labels are used for testing only."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from crossearth_gate.data.catalog import RGB, DomainSpec, Pair, list_pairs
from crossearth_gate.data.datasets import SegmentationDataset, Transform
from crossearth_gate.data.resumable import ResumableDistributedSampler, ResumableLoader, ResumableRandomSampler
from crossearth_gate.data.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, Stats, TrainTransform
from crossearth_gate.util.errors import UserError


def _split_source(pairs: list[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Hold out a seeded share of the source files (at least one) for checkpoint selection.

    ``fraction == 0`` holds out nothing: no validation, the last checkpoint is reported.
    """
    if fraction == 0:
        return pairs, []
    if not 0 < fraction < 1:
        raise UserError(f"val_fraction must be in [0, 1), got {fraction}")
    if len(pairs) < 2:
        folder = pairs[0][0].parent
        raise UserError(f"source {folder} has 1 image: too few to split off validation; give `val`")
    n_val = min(len(pairs) - 1, max(1, round(len(pairs) * fraction)))
    held = set(np.random.default_rng(seed).permutation(len(pairs))[:n_val].tolist())
    train = [p for i, p in enumerate(pairs) if i not in held]
    return train, [p for i, p in enumerate(pairs) if i in held]


def _unrepeated_sampler(dataset: SegmentationDataset) -> UnrepeatedDistributedSampler | None:
    """Under DDP, split evaluation images across ranks WITHOUT padding: every pixel is counted once.

    Lightning's default distributed sampler repeats samples to even out the ranks, which would count
    some images twice in a domain's confusion matrix.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return UnrepeatedDistributedSampler(dataset, shuffle=False)
    return None


class SegDataModule(L.LightningDataModule):
    """Train on the labelled source, select checkpoints on source val, test on each target domain."""

    def __init__(
        self,
        source: DomainSpec,
        targets: dict[str, DomainSpec],
        val: DomainSpec | None = None,
        val_fraction: float = 0.2,
        unlabelled_target: DomainSpec | None = None,
        crop_size: int = 224,
        scale_range: tuple[float, float] = (0.5, 2.0),
        batch_size: int = 4,
        num_workers: int = 0,
        mean: Stats = IMAGENET_MEAN,
        std: Stats = IMAGENET_STD,
        seed: int = 0,
        cache: bool = True,
    ) -> None:
        super().__init__()
        if batch_size < 1 or num_workers < 0:
            raise UserError(f"need batch_size >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
        self.source, self.targets, self.val = source, dict(targets), val
        self.val_fraction, self.unlabelled_target = val_fraction, unlabelled_target
        self.batch_size, self.num_workers, self.seed, self.cache = batch_size, num_workers, seed, cache
        self.train_transform = TrainTransform(crop_size, scale_range, mean=mean, std=std)
        self.eval_transform = EvalTransform(mean, std)
        self._check_classes()
        self._train: SegmentationDataset | None = None
        self._val: SegmentationDataset | None = None
        self._tests: list[SegmentationDataset] = []
        self._unlabelled: SegmentationDataset | None = None

    def _check_classes(self) -> None:
        """Class indices only mean the same thing across domains when the class lists are equal."""
        domains = {"val": self.val, "unlabelled_target": self.unlabelled_target}
        domains |= {f"target {name!r}": spec for name, spec in self.targets.items()}
        for role, spec in domains.items():
            if spec is not None and spec.info.classes != self.classes:
                raise UserError(
                    f"{role} ({spec.dataset}: {', '.join(spec.info.classes)}) has other classes than the "
                    f"source ({self.source.dataset}: {', '.join(self.classes)})"
                )

    @property
    def classes(self) -> tuple[str, ...]:
        return self.source.info.classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def palette(self) -> tuple[RGB, ...]:
        return self.source.info.palette

    @property
    def target_names(self) -> list[str]:
        return list(self.targets)

    def _dataset(
        self, pairs: list[Pair], spec: DomainSpec, transform: Transform, labelled: bool = True
    ) -> SegmentationDataset:
        dataset = SegmentationDataset(pairs, spec.info, transform, labelled, self.cache)
        if self.cache:
            dataset.preload()
        return dataset

    def setup(self, stage: str | None = None) -> None:
        if self._train is not None:
            return
        source_pairs = list_pairs(self.source)
        if self.val is None:
            train_pairs, val_pairs = _split_source(source_pairs, self.val_fraction, self.seed)
            val_spec = self.source
        else:
            train_pairs, val_pairs, val_spec = source_pairs, list_pairs(self.val), self.val
            shared = {p[0].resolve() for p in train_pairs} & {p[0].resolve() for p in val_pairs}
            if shared:
                raise UserError(f"val shares {len(shared)} image(s) with the source, e.g. {min(shared)}")
        self._val = self._dataset(val_pairs, val_spec, self.eval_transform) if val_pairs else None
        self._tests = [self._dataset(list_pairs(s), s, self.eval_transform) for s in self.targets.values()]
        if self.unlabelled_target is not None:
            spec = self.unlabelled_target
            images = list_pairs(spec, labelled=False)
            self._unlabelled = self._dataset(images, spec, self.train_transform, labelled=False)
        self._train = self._dataset(train_pairs, self.source, self.train_transform)

    def _loader(
        self, dataset: SegmentationDataset | None, batch: int, shuffle: bool = False, seed: int | None = None
    ) -> DataLoader:
        if dataset is None:
            raise RuntimeError("SegDataModule.setup() must run before asking for loaders")
        return DataLoader(
            dataset,
            batch_size=batch,
            shuffle=shuffle,
            sampler=None if shuffle else _unrepeated_sampler(dataset),
            drop_last=shuffle and len(dataset) >= batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed if seed is None else seed) if shuffle else None,
        )

    def train_dataloader(self) -> DataLoader:
        """The seeded shuffled order of before (RandomSampler; DistributedSampler under DDP), resumable mid-epoch."""
        dataset = self._train
        if dataset is None:
            raise RuntimeError("SegDataModule.setup() must run before asking for loaders")
        generator = torch.Generator().manual_seed(self.seed)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        sampler = (ResumableDistributedSampler(dataset, self.seed) if distributed
                   else ResumableRandomSampler(len(dataset), generator))
        return ResumableLoader(
            dataset,
            sampler,
            batch_size=self.batch_size,
            drop_last=len(dataset) >= self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=generator,
        )

    @property
    def has_validation(self) -> bool:
        """False when val_fraction is 0 and no val domain is given (then the last checkpoint is used)."""
        return self._val is not None

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        if self._train is not None and self._val is None:
            return []
        return self._loader(self._val, 1)  # images differ in size, so they cannot be stacked

    def test_dataloader(self) -> list[DataLoader]:
        """One loader per target, in `target_names` order."""
        if self._train is None:
            raise RuntimeError("SegDataModule.setup() must run before asking for loaders")
        return [self._loader(dataset, 1) for dataset in self._tests]

    def unlabelled_dataloader(self) -> DataLoader | None:
        """Target images without masks (for adaptation methods); None when not configured."""
        if self.unlabelled_target is None:
            return None
        return self._loader(self._unlabelled, self.batch_size, shuffle=True)

    def fisher_dataloader(self, batch_size: int, seed: int | None = None) -> DataLoader:
        """Labelled, augmented source train samples in a seeded order, for the Fisher gate's M draws.

        Pass a different ``seed`` per selection (and per rank) so each selection scores fresh samples.
        """
        return self._loader(self._train, batch_size, shuffle=True, seed=seed)
