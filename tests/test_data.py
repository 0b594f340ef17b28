"""Data layer: layouts, label mapping, file validation, aligned augmentation and the data module."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from crossearth_gate.data import (
    DomainSpec,
    EvalTransform,
    SegDataModule,
    SegmentationDataset,
    TrainTransform,
    demo_data_root,
    get_dataset_info,
    list_pairs,
    read_image,
    read_mask,
)
from crossearth_gate.util.errors import UserError
from support.paths import SHARED_DATA

CROPS = SHARED_DATA / "isprs-loveda-crops"
POTSDAM = get_dataset_info("potsdam")
DUBAI = get_dataset_info("dubai")
LAND, WATER, BUILDING, VEGETATION, ROAD = DUBAI.palette


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), mode).save(path)
    return path


def _rgb(h: int = 6, w: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _mmseg(root: Path, n: int, split: str = "train", size: int = 16) -> Path:
    """n images with 1-band masks holding raw labels 0..6 (reduce_zero_label style)."""
    for i in range(n):
        _save(root / "img_dir" / split / f"{i:02d}.png", _rgb(size, size, i))
        _save(root / "ann_dir" / split / f"{i:02d}.png", np.full((size, size), i % 7))
    return root


def _dubai_tile(root: Path, tile: int, mask: np.ndarray) -> Path:
    stem = root / f"tile_{tile}"
    _save(stem / "images" / "image_part_001.jpg", _rgb(*mask.shape[:2]))
    return _save(stem / "masks" / "image_part_001.png", mask)


def _raises(match: str, fn, *args) -> str:
    with pytest.raises(UserError, match=match) as err:
        fn(*args)
    message = str(err.value)
    assert "\n" not in message
    return message


# --- layouts and label mapping ---------------------------------------------------------------------


def test_mmseg_pairs_and_reduce_zero_label(tmp_path: Path) -> None:
    root = _mmseg(tmp_path, 3)
    pairs = list_pairs(DomainSpec("potsdam", str(root), split="train"))
    assert [p[0].name for p in pairs] == ["00.png", "01.png", "02.png"]
    assert all(mask == root / "ann_dir" / "train" / img.name for img, mask in pairs)
    raw = np.array([[0, 1, 2, 3], [4, 5, 6, 255]])
    _save(tmp_path / "m.png", raw)
    expected = np.array([[255, 0, 1, 2], [3, 4, 5, 255]])
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", POTSDAM), expected)


def test_mmseg_without_split_folder(tmp_path: Path) -> None:
    _save(tmp_path / "img_dir" / "a.png", _rgb())
    _save(tmp_path / "ann_dir" / "a.png", np.ones((6, 8)))
    assert list_pairs(DomainSpec("vaihingen", str(tmp_path))) == [
        (tmp_path / "img_dir" / "a.png", tmp_path / "ann_dir" / "a.png")
    ]


def test_colour_mask_mapping_and_tile_selection(tmp_path: Path) -> None:
    colours = np.array([[LAND, WATER, BUILDING], [VEGETATION, ROAD, (0x9B, 0x9B, 0x9B)], [(0, 0, 0)] * 3])
    mask_path = _dubai_tile(tmp_path, 3, colours)
    _dubai_tile(tmp_path, 1, colours)
    expected = np.array([[0, 1, 2], [3, 4, 255], [255, 255, 255]])
    np.testing.assert_array_equal(read_mask(mask_path, DUBAI), expected)
    assert [p[0].parts[-3] for p in list_pairs(DomainSpec("dubai", str(tmp_path)))] == ["tile_1", "tile_3"]
    assert [p[1] for p in list_pairs(DomainSpec("dubai", str(tmp_path), tiles=[3]))] == [mask_path]


def test_palette_mask_is_converted_to_rgb(tmp_path: Path) -> None:
    indices = np.array([[0, 1], [2, 3]], dtype=np.uint8)  # palette order differs from class order
    im = Image.fromarray(indices, "P")
    im.putpalette([*ROAD, *LAND, *(0x9B, 0x9B, 0x9B), *WATER])
    im.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png", DUBAI), [[4, 0], [255, 1]])


# --- bad input -------------------------------------------------------------------------------------


def test_unknown_dataset_lists_known_names() -> None:
    assert "vaihingen" in _raises("unknown dataset 'mars'", get_dataset_info, "mars")


def test_missing_folder_and_missing_mask(tmp_path: Path) -> None:
    _raises(str(tmp_path / "nope"), list_pairs, DomainSpec("potsdam", str(tmp_path / "nope")))
    _raises(str(tmp_path / "nope"), list_pairs, DomainSpec("dubai", str(tmp_path / "nope")))
    _save(tmp_path / "img_dir" / "a.png", _rgb())
    _save(tmp_path / "ann_dir" / "b.png", np.ones((6, 8)))
    message = _raises("has no mask", list_pairs, DomainSpec("potsdam", str(tmp_path)))
    assert str(tmp_path / "img_dir" / "a.png") in message


def test_size_mismatch_names_both_files(tmp_path: Path) -> None:
    image = _save(tmp_path / "img_dir" / "a.png", _rgb(6, 8))
    mask = _save(tmp_path / "ann_dir" / "a.png", np.ones((6, 7)))
    dataset = SegmentationDataset.from_spec(DomainSpec("potsdam", str(tmp_path)), EvalTransform())
    message = _raises("8x6", dataset.__getitem__, 0)
    assert str(image) in message and str(mask) in message and "7x6" in message


def test_out_of_range_label_and_unknown_colour(tmp_path: Path) -> None:
    bad = _save(tmp_path / "bad.png", np.array([[1, 7], [9, 255]]))
    message = _raises("7, 9", read_mask, bad, POTSDAM)
    assert str(bad) in message
    colour = _save(tmp_path / "colour.png", np.array([[LAND, (0x12, 0x34, 0x56)]]))
    assert str(colour) in _raises("#123456", read_mask, colour, DUBAI)
    rgb = _save(tmp_path / "rgb.png", _rgb())
    _raises("1-band", read_mask, rgb, POTSDAM)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_file_fails_even_with_pil_leniency_on(
    tmp_path: Path, suffix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _save(tmp_path / f"t{suffix}", _rgb(64, 64))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert str(path) in _raises("cannot read", read_image, path)


def test_image_band_count(tmp_path: Path) -> None:
    rgba = _save(tmp_path / "rgba.png", np.zeros((4, 4, 4)))
    assert str(rgba) in _raises("expected 3 bands, found 4", read_image, rgba)
    grey = _save(tmp_path / "grey.png", np.zeros((4, 4)))
    _raises("found 1", read_image, grey)
    (tmp_path / "text.png").write_text("not an image")
    _raises("cannot read", read_image, tmp_path / "text.png")


# --- transforms ------------------------------------------------------------------------------------

PALETTE = np.array([(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)], dtype=np.uint8)


def _blocky(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A mask of 8-pixel blocks and an image whose colour encodes the mask, to check alignment."""
    blocks = np.random.default_rng(seed).integers(0, len(PALETTE), (h // 8 + 1, w // 8 + 1))
    mask = np.kron(blocks, np.ones((8, 8), dtype=np.int64))[:h, :w].astype(np.uint8)
    return PALETTE[mask], mask


def _class_from_image(image: torch.Tensor, mean: tuple, std: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Undo normalisation, then assign the nearest palette colour; also return that colour distance."""
    raw = (image * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)) * 255
    pixels = raw.permute(1, 2, 0).numpy()[..., None, :]
    dist = np.abs(pixels - PALETTE.astype(np.float32)).max(-1)
    return dist.argmin(-1), dist.min(-1)


def test_train_transform_keeps_image_and_mask_aligned() -> None:
    image, mask = _blocky(70, 90)
    exact = TrainTransform(32, scale_range=(1.0, 1.0))
    torch.manual_seed(0)
    for _ in range(20):
        image_t, mask_t = exact(image, mask)
        assert image_t.shape == (3, 32, 32) and mask_t.shape == (32, 32) and mask_t.dtype == torch.long
        np.testing.assert_array_equal(_class_from_image(image_t, exact.mean, exact.std)[0], mask_t.numpy())
    scaled = TrainTransform(48, scale_range=(0.5, 2.0))
    for _ in range(20):
        image_t, mask_t = scaled(image, mask)
        assert image_t.shape == (3, 48, 48) and mask_t.shape == (48, 48)
        cls, dist = _class_from_image(image_t, scaled.mean, scaled.std)
        clean = (dist < 2) & (mask_t.numpy() != 255)  # skip pixels blended across a block edge
        assert clean.sum() > 100 and (cls[clean] == mask_t.numpy()[clean]).mean() > 0.99


def test_train_transform_pads_small_images_and_is_seeded() -> None:
    image, mask = _blocky(10, 12)
    transform = TrainTransform(24, scale_range=(1.0, 1.0), hflip=False, vflip=False, rot90=False)
    image_t, mask_t = transform(image, mask)
    assert (mask_t[10:] == 255).all() and (mask_t[:, 12:] == 255).all()
    np.testing.assert_array_equal(mask_t[:10, :12].numpy(), mask)
    std, mean = torch.tensor(transform.std).view(3, 1, 1), torch.tensor(transform.mean).view(3, 1, 1)
    assert torch.allclose(image_t[:, 10:] * std + mean, torch.zeros(()), atol=1e-6)  # padded with 0
    augment = pickle.loads(pickle.dumps(TrainTransform(16)))
    torch.manual_seed(3)
    first = augment(image, None)
    torch.manual_seed(3)
    assert first[1] is None and torch.equal(first[0], augment(image, None)[0])


def test_eval_transform_normalises_whole_image() -> None:
    image = np.full((5, 7, 3), 255, dtype=np.uint8)
    transform = EvalTransform(mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 1.0))
    image_t, mask_t = transform(image, np.zeros((5, 7), np.uint8))
    assert image_t.shape == (3, 5, 7) and mask_t.shape == (5, 7)
    assert torch.allclose(image_t[:, 0, 0], torch.tensor([1.0, 2.0, 0.5]))


# --- data module -----------------------------------------------------------------------------------


def _module(tmp_path: Path, **kwargs) -> SegDataModule:
    source = DomainSpec("potsdam", str(_mmseg(tmp_path / "src", 10)), split="train")
    targets = {
        "vaihingen": DomainSpec("vaihingen", str(_mmseg(tmp_path / "vai", 2, "val")), split="val"),
        "potsdam_irrg": DomainSpec("potsdam_irrg", str(_mmseg(tmp_path / "irrg", 3, "val")), split="val"),
    }
    return SegDataModule(source, targets, crop_size=8, batch_size=4, **kwargs)


def test_datamodule_split_loaders_and_names(tmp_path: Path) -> None:
    module = _module(tmp_path, unlabelled_target=DomainSpec("vaihingen", str(tmp_path / "vai"), split="val"))
    module.setup()
    module.setup()  # idempotent
    train = {p[0] for p in module._train.pairs}
    val = {p[0] for p in module._val.pairs}
    assert len(val) == 2 and len(train) == 8 and not train & val
    again = _module(tmp_path)
    again.setup()
    assert {p[0] for p in again._val.pairs} == val
    assert module.target_names == ["vaihingen", "potsdam_irrg"] and module.num_classes == 6
    assert [len(loader.dataset) for loader in module.test_dataloader()] == [2, 3]
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (4, 3, 8, 8) and batch["mask"].shape == (4, 8, 8)
    assert next(iter(module.val_dataloader()))["image"].shape == (1, 3, 16, 16)
    assert "mask" not in next(iter(module.unlabelled_dataloader()))
    order = [b["path"] for b in module.fisher_dataloader(2)]
    assert order == [b["path"] for b in again.fisher_dataloader(2)]
    assert "mask" in next(iter(again.fisher_dataloader(1)))
    assert again.unlabelled_dataloader() is None


def test_datamodule_refuses_mixed_classes_and_leaky_val(tmp_path: Path) -> None:
    source = DomainSpec("potsdam", str(_mmseg(tmp_path / "src", 4)), split="train")
    loveda = DomainSpec("loveda_urban", str(tmp_path), split="val")
    message = _raises("target 'urban'.*other classes", SegDataModule, source, {"urban": loveda})
    assert "loveda_urban" in message and "potsdam" in message
    module = SegDataModule(source, {}, val=source)
    _raises("val shares 4 image", module.setup)


def test_dataset_with_cache_pickles_and_works_in_workers(tmp_path: Path) -> None:
    module = _module(tmp_path, num_workers=1)
    module.setup()
    restored = pickle.loads(pickle.dumps(module._train))
    assert len(restored._cache) == len(module._train)
    assert next(iter(module.train_dataloader()))["image"].shape == (4, 3, 8, 8)


# --- real data -------------------------------------------------------------------------------------


@pytest.mark.skipif(not demo_data_root().is_dir(), reason="demo data not generated")
def test_shipped_demo_data_loads() -> None:
    dataset = SegmentationDataset.from_spec(DomainSpec("dubai", str(demo_data_root())), EvalTransform())
    assert len(dataset) == 72
    dataset.preload()
    assert max(dataset.arrays(0)[0].shape) <= 512


@pytest.mark.skipif(not CROPS.is_dir(), reason=f"real crops not found at {CROPS}")
@pytest.mark.parametrize(
    ("dataset", "folder", "count", "side"),
    [("potsdam", "potsdam", 1, 512), ("vaihingen", "vaihingen", 1, 512), ("loveda_rural", "loveda", 3, 1024)],
)
def test_real_crops_load(dataset: str, folder: str, count: int, side: int) -> None:
    data = SegmentationDataset.from_spec(DomainSpec(dataset, str(CROPS / folder)), EvalTransform())
    assert len(data) == count
    for i in range(count):
        sample = data[i]
        assert sample["image"].shape == (3, side, side)
        labels = set(sample["mask"].unique().tolist()) - {255}
        assert labels and max(labels) < data.info.num_classes
