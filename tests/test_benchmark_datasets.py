"""CASID, RescueNet and Potsdam-for-RescueNet in the CrossEarth releases' real layouts: names, ids, wrong trees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crossearth_gate.data import DomainSpec, SegmentationDataset, get_dataset_info, list_pairs, read_mask
from crossearth_gate.data.datasets import fit_within
from crossearth_gate.util.errors import UserError
from support.benchmark_tree import save, write_casid, write_mmseg, write_rescuenet

CASID = get_dataset_info("casid")
RESCUENET = get_dataset_info("rescuenet")


def _one_line_error(match: str, spec: DomainSpec) -> str:
    with pytest.raises(UserError, match=match) as err:
        list_pairs(spec)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_class_lists_are_the_releases() -> None:
    assert CASID.classes == ("background", "building", "forest", "road", "water")
    shared = ("impervious_surface", "building", "vegetation", "car", "clutter")
    for name in ("rescuenet", "potsdam_rescue", "potsdam_rescue_irrg"):
        assert get_dataset_info(name).classes == shared, "source and target must share class indices"


def test_casid_pairs_per_domain_and_split(tmp_path: Path) -> None:
    write_casid(tmp_path, "sub", "train", 2)
    write_casid(tmp_path, "sub", "test", 1)
    write_casid(tmp_path, "trf", "train", 1)
    pairs = list_pairs(DomainSpec("casid", str(tmp_path), split="train", domain="sub"))
    assert [(i.relative_to(tmp_path).as_posix(), m.relative_to(tmp_path).as_posix()) for i, m in pairs] == [
        ("SubMs/all_train/image/sub_0.png", "SubMs/all_train/label/sub_0-label.png"),
        ("SubMs/all_train/image/sub_1.png", "SubMs/all_train/label/sub_1-label.png"),
    ]
    test = list_pairs(DomainSpec("casid", str(tmp_path), split="test", domain="sub"))
    assert [i.name for i, _ in test] == ["sub_0.png"]
    assert [i.parent.parent.parent.name for i, _ in list_pairs(DomainSpec("casid", str(tmp_path), "train",
                                                                          domain="trf"))] == ["TroRf"]


def test_casid_troms_test_masks_in_label_id(tmp_path: Path) -> None:
    write_casid(tmp_path, "tms", "test", 1, mask_folder="label_id")
    (_, mask), = list_pairs(DomainSpec("casid", str(tmp_path), split="test", domain="tms"))
    assert mask == tmp_path / "TroMs" / "all_test" / "label_id" / "tms_0-label.png"


def test_casid_ids_are_kept_without_zero_reduction(tmp_path: Path) -> None:
    raw = np.array([[0, 1, 2], [3, 4, 255]])
    np.testing.assert_array_equal(read_mask(save(tmp_path / "m.png", raw), CASID), raw)
    with pytest.raises(UserError, match=r"label values 5 out of range for 'casid' \(allowed 0\.\.4, 255\)"):
        read_mask(save(tmp_path / "bad.png", np.array([[0, 5]])), CASID)


def test_rescuenet_pairs_and_reduce_zero_label(tmp_path: Path) -> None:
    write_rescuenet(tmp_path, "test", 2)
    pairs = list_pairs(DomainSpec("rescuenet", str(tmp_path)))  # the benchmark's split is the default
    assert [(i.relative_to(tmp_path).as_posix(), m.relative_to(tmp_path).as_posix()) for i, m in pairs] == [
        ("test-org-img/10800.jpg", "test-label-img/10800_lab.png"),
        ("test-org-img/10801.jpg", "test-label-img/10801_lab.png"),
    ]
    raw = np.array([[0, 1, 2, 3], [4, 5, 255, 1]])
    expected = np.array([[255, 0, 1, 2], [3, 4, 255, 0]])
    np.testing.assert_array_equal(read_mask(save(tmp_path / "m.png", raw), RESCUENET), expected)
    with pytest.raises(UserError, match=r"label values 6 out of range for 'rescuenet' \(allowed 1\.\.5, 255, 0 = "):
        read_mask(save(tmp_path / "bad.png", np.array([[1, 6]])), RESCUENET)


def test_rescuenet_is_read_shrunk_to_fit_512_as_the_benchmark_does(tmp_path: Path) -> None:
    """CrossEarth's RescueNet pipelines resize the drone images to fit 512 x 512 (keeping the aspect ratio)."""
    image = tmp_path / "test-org-img" / "1.jpg"
    image.parent.mkdir()
    Image.fromarray(np.zeros((768, 1024, 3), np.uint8)).save(image)
    raw = np.ones((768, 1024), np.uint8)  # building (id 2) on the right half, impervious surface (id 1) left
    raw[:, 512:] = 2
    save(tmp_path / "test-label-img" / "1_lab.png", raw)
    dataset = SegmentationDataset.from_spec(DomainSpec("rescuenet", str(tmp_path)), lambda i, m: (i, m))
    image_array, mask = dataset.arrays(0)
    assert image_array.shape == (384, 512, 3) and mask.shape == (384, 512)
    expected = np.zeros((384, 512), np.uint8)
    expected[:, 256:] = 1
    np.testing.assert_array_equal(mask, expected)  # nearest label: no blended ids at the border
    small = np.zeros((30, 40, 3), np.uint8)
    assert fit_within(small, None, 512)[0] is small, "smaller images are never enlarged"
    assert get_dataset_info("potsdam_rescue").fit_size is None, "Potsdam tiles are read as stored"


@pytest.mark.parametrize("name", ["potsdam_rescue", "potsdam_rescue_irrg"])
def test_potsdam_rescue_is_mmseg_with_ids_1_to_5(tmp_path: Path, name: str) -> None:
    write_mmseg(tmp_path, "train", 2, 5)
    info = get_dataset_info(name)
    pairs = list_pairs(DomainSpec(name, str(tmp_path), split="train"))
    assert [m.relative_to(tmp_path).as_posix() for _, m in pairs] == ["ann_dir/train/2_10_0.png",
                                                                      "ann_dir/train/2_10_1.png"]
    raw = np.array([[0, 1, 2], [3, 5, 255]])
    np.testing.assert_array_equal(read_mask(save(tmp_path / "m.png", raw), info), [[255, 0, 1], [2, 4, 255]])
    with pytest.raises(UserError, match="label values 6 out of range"):
        read_mask(save(tmp_path / "bad.png", np.array([[6]])), info)


def test_casid_wrong_layouts_are_one_line(tmp_path: Path) -> None:
    write_casid(tmp_path, "sub", "train", 1)
    root = str(tmp_path)
    assert "one of sub, tem, tms, trf; got no `domain`" in _one_line_error("needs `domain`",
                                                                             DomainSpec("casid", root, "train"))
    _one_line_error("got domain 'SubMs'", DomainSpec("casid", root, "train", domain="SubMs"))
    _one_line_error("has splits train, test; got split 'val'", DomainSpec("casid", root, "val", domain="sub"))
    _one_line_error("got split None", DomainSpec("casid", root, domain="sub"))
    message = _one_line_error("CASID domain folder not found", DomainSpec("casid", root, "train", domain="tem"))
    assert str(tmp_path / "TemMs") in message and "SubMs, TemMs, TroMs, TroRf" in message
    inner = str(tmp_path / "SubMs")
    assert "point it at the folder above" in _one_line_error("not found", DomainSpec("casid", inner, "train",
                                                                                      domain="sub"))
    _one_line_error("image folder not found: .*all_test/image", DomainSpec("casid", root, "test", domain="sub"))
    _one_line_error("dataset folder not found", DomainSpec("casid", str(tmp_path / "nope"), "train", domain="sub"))


def test_rescuenet_and_domain_misuse_are_one_line(tmp_path: Path) -> None:
    write_rescuenet(tmp_path, "test", 1)
    _one_line_error("has splits train, val, test; got 'validation'", DomainSpec("rescuenet", str(tmp_path),
                                                                                "validation"))
    _one_line_error("image folder not found: .*train-org-img", DomainSpec("rescuenet", str(tmp_path), "train"))
    # masks named like the images (no _lab suffix): the release's names are expected
    (tmp_path / "test-label-img" / "10800_lab.png").rename(tmp_path / "test-label-img" / "10800.png")
    _one_line_error(r"has no mask \(expected .*10800_lab\.png\)", DomainSpec("rescuenet", str(tmp_path)))
    _one_line_error("'vaihingen' has no domains: remove `domain`",
                    DomainSpec("vaihingen", str(tmp_path), "train", domain="sub"))
    _one_line_error("'casid' is not tiled", DomainSpec("casid", str(tmp_path), "train", tiles=[1], domain="sub"))
