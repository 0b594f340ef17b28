"""Source/target loaders for one domain-generalisation run; target labels are used for testing only."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from crossearth_gate.data.catalog import RGB, DomainSpec, Pair, list_pairs
from crossearth_gate.data.datasets import SegmentationDataset, Transform
from crossearth_gate.data.radiometry import Radiometry, band_statistics, imagenet
from crossearth_gate.data.raster import is_raster
from crossearth_gate.data.resumable import ResumableDistributedSampler, ResumableLoader, ResumableRandomSampler
from crossearth_gate.data.scenes import RasterScene, open_scene
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


def other_domains(targets: dict[str, DomainSpec], val: DomainSpec | None = None,
                  unlabelled_target: DomainSpec | None = None) -> dict[str, DomainSpec]:
    """The domains besides the source, by the role a one-line error names them with."""
    domains = {"val": val, "unlabelled_target": unlabelled_target}
    domains |= {f"target {name!r}": spec for name, spec in targets.items()}
    return {role: spec for role, spec in domains.items() if spec is not None}


def check_channels(source: DomainSpec, others: dict[str, DomainSpec]) -> tuple[int, tuple[int, int, int]]:
    """One model reads every domain: the same channel count, with R, G, B at the same positions.

    Known from the definitions alone (``bands``, ``rgb_bands``), so it is checked before any model is built."""
    want = (source.info.channels, source.info.rgb_channels)
    for role, spec in others.items():
        got = (spec.info.channels, spec.info.rgb_channels)
        if got != want:
            raise UserError(f"{role} ({spec.name}) reads {got[0]} channel(s) with R, G, B at positions {list(got[1])} "
                            f"but the source ({source.name}) reads {want[0]} with R, G, B at {list(want[1])}: every "
                            "domain of a run needs the same channels (`bands`, `rgb_bands`)")
    return want


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
        self.crop_size, self.scale_range, self.mean, self.std = crop_size, scale_range, mean, std
        self.train_transform = TrainTransform(crop_size, scale_range, mean=mean, std=std)
        self.eval_transform = EvalTransform(mean, std)
        self.radiometry: Radiometry = imagenet(mean, std)
        self._check_classes()
        check_channels(source, other_domains(self.targets, val, unlabelled_target))
        self._train: SegmentationDataset | None = None
        self._val: SegmentationDataset | None = None
        self._tests: list[SegmentationDataset] = []
        self._unlabelled: SegmentationDataset | None = None

    def _check_classes(self) -> None:
        """Class indices only mean the same thing across domains when the class lists are equal."""
        for role, spec in other_domains(self.targets, self.val, self.unlabelled_target).items():
            if spec.info.classes != self.classes:
                raise UserError(
                    f"{role} ({spec.name}: {', '.join(spec.info.classes)}) has other classes than the "
                    f"source ({self.source.name}: {', '.join(self.classes)})"
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

    @property
    def channels(self) -> int:
        """Channels the model sees (bands picked per pixel); R, G, B are ``rgb_bands`` among them."""
        return self.source.info.channels

    @property
    def rgb_bands(self) -> tuple[int, int, int]:
        """1-based positions of R, G, B among the channels (the backbone's pretrained kernels)."""
        return self.source.info.rgb_channels

    def _dataset(
        self, pairs: list[Pair], spec: DomainSpec, transform: Transform, labelled: bool = True
    ) -> SegmentationDataset:
        scenes = self._scenes.get(id(pairs))
        # Scenes are read as random windows: a batch of crops per epoch at least, even from one scene
        crops = self.batch_size if scenes is not None and transform is self.train_transform else 0
        dataset = SegmentationDataset(pairs, spec.info, transform, labelled, self.cache and scenes is None, scenes,
                                      crops)
        if self.cache:
            dataset.preload()
        return dataset

    def _open_scenes(self, pairs: list[Pair], spec: DomainSpec, role: str) -> None:
        """Rasters: open and check every image of a domain now (bands, grid, nodata); JPEG/PNG stay as they were."""
        rasters = [is_raster(image) for image, _ in pairs]
        if not any(rasters):
            if spec.region is not None:
                raise UserError(f"{role}: `region` needs raster images (GeoTIFF ...), {pairs[0][0]} is not one")
            if not spec.info.plain_rgb:
                raise UserError(f"{role}: `bands`/`rgb_bands` other than R, G, B need raster images (GeoTIFF ...), "
                                f"{pairs[0][0]} is a JPEG/PNG read as RGB")
            return
        if spec.info.fit_size is not None:
            # crops are read as windows at the stored resolution: resampling a whole scene is what windows avoid
            raise UserError(f"{role}: `fit_size` applies to JPEG/PNG images only; {pairs[0][0]} is a raster: "
                            "resample it beforehand (e.g. gdalwarp -tr) and drop fit_size")
        if not all(rasters):
            plain = pairs[rasters.index(False)][0]
            raise UserError(f"{role} mixes raster images and JPEG/PNG ({plain}); convert one kind to the other")
        region = spec.region
        pixels, bounds = (region.pixels, region.bounds) if region is not None else (None, None)
        scenes: list[RasterScene] = []
        for image, label in pairs:
            scene, grid = open_scene(image, label, spec.info, pixels, bounds)
            kind = (grid.count, scene.dtype)
            if self._kind is None:
                self._kind = (kind, str(image))
            elif self._kind[0] != kind:
                (count, dtype), first = self._kind
                raise UserError(f"images of one dataset differ: {first} has {count} band(s) of {dtype}, {image} has "
                                f"{grid.count} of {scene.dtype}")
            scenes.append(scene)
            if spec.region is not None:
                self._regions.append((role, scene))
        self._scenes[id(pairs)] = scenes

    def _check_regions(self) -> None:
        """Regions of one scene used by two roles must not overlap: no test pixel is ever trained on.

        Only domains that give a region are compared: whole images shared by roles are the user's call, as
        they have always been for JPEG/PNG folders."""
        for i, (role_a, a) in enumerate(self._regions):
            for role_b, b in self._regions[i + 1:]:
                if role_a != role_b and a.image == b.image and a.region.overlaps(b.region):
                    raise UserError(f"{role_a} and {role_b} overlap on {a.image}: give them disjoint regions")

    def _radiometry(self, train: list[Pair]) -> Radiometry:
        """ImageNet's for 8-bit data (today's numbers); else statistics of the training regions, computed once."""
        scenes = self._scenes.get(id(train))
        if scenes is None:
            return imagenet(self.mean, self.std)
        info, first = self.source.info, scenes[0]
        rgb = info.rgb_channels
        mode = info.normalise
        if mode == "auto":  # ImageNet's statistics describe R, G, B in that order, nothing else
            mode = "imagenet" if first.dtype == "uint8" and info.plain_rgb else "statistics"
        if mode == "imagenet" and not info.plain_rgb:
            raise UserError(f"dataset {info.name}.normalise: imagenet needs three channels in R, G, B order; these "
                            f"are {info.channels} with R, G, B at {list(rgb)}: use statistics (or auto)")
        if mode == "imagenet":
            return Radiometry("imagenet", tuple(self.mean), tuple(self.std), 255.0, tuple(first.bands), info.nodata,
                              tuple(rgb))
        mean, std = band_statistics([(s.image, s.region) for s in scenes], first.bands, info.nodata)
        return Radiometry("statistics", mean, std, 1.0, tuple(first.bands), info.nodata, tuple(rgb))

    def setup(self, stage: str | None = None) -> None:
        if self._train is not None:
            return
        self._scenes: dict[int, list[RasterScene]] = {}
        self._regions: list[tuple[str, RasterScene]] = []
        self._kind: tuple[tuple[int, str], str] | None = None
        source_pairs = list_pairs(self.source)
        if self.val is None:
            train_pairs, val_pairs = _split_source(source_pairs, self.val_fraction, self.seed)
            val_spec = self.source
        else:
            train_pairs, val_pairs, val_spec = source_pairs, list_pairs(self.val), self.val
            shared = {p[0].resolve() for p in train_pairs} & {p[0].resolve() for p in val_pairs}
            if shared and (self.val.region is None or self.source.region is None):
                raise UserError(f"val shares {len(shared)} image(s) with the source, e.g. {min(shared)}")
        test_pairs = [list_pairs(s) for s in self.targets.values()]
        unlabelled = None if self.unlabelled_target is None else list_pairs(self.unlabelled_target, labelled=False)
        self._open_scenes(train_pairs, self.source, "source")
        if val_pairs:
            self._open_scenes(val_pairs, val_spec, "val")
        for (name, spec), pairs in zip(self.targets.items(), test_pairs, strict=True):
            self._open_scenes(pairs, spec, f"target {name!r}")
        if unlabelled is not None and self.unlabelled_target is not None:
            self._open_scenes(unlabelled, self.unlabelled_target, "unlabelled_target")
        self._check_regions()
        self.radiometry = self._radiometry(train_pairs)
        for scenes in self._scenes.values():
            for scene in scenes:
                scene.fill = self.radiometry.fill()
        self.train_transform = TrainTransform(self.crop_size, self.scale_range, radiometry=self.radiometry,
                                              min_valid=self.source.info.min_valid if self._scenes else 0.0)
        self.eval_transform = EvalTransform(radiometry=self.radiometry)
        self._val = self._dataset(val_pairs, val_spec, self.eval_transform) if val_pairs else None
        self._tests = [self._dataset(pairs, s, self.eval_transform)
                       for s, pairs in zip(self.targets.values(), test_pairs, strict=True)]
        if self.unlabelled_target is not None and unlabelled is not None:
            spec = self.unlabelled_target
            self._unlabelled = self._dataset(unlabelled, spec, self.train_transform, labelled=False)
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
