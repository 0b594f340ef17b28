"""Bad-input suite, training data: corrupt, truncated and wrong-band images, masks of the wrong size or with
unknown labels, broken folder layouts; also raised inside DataLoader workers. One line naming the file."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.bad_inputs import cli
from support.cli import fit_argv
from support.paths import DEMO

FIRST = "image_part_001"


def dubai_copy(root: Path, images: int = 3) -> Path:
    """``images`` real demo pairs of tile 1 in the Dubai layout under ``root``/tile_1."""
    for kind, suffix in (("images", ".jpg"), ("masks", ".png")):
        (root / "tile_1" / kind).mkdir(parents=True, exist_ok=True)
        for i in range(1, images + 1):
            name = f"image_part_{i:03d}{suffix}"
            shutil.copy(DEMO / "tile_1" / kind / name, root / "tile_1" / kind / name)
    return root


def _image(root: Path) -> Path:
    return root / "tile_1" / "images" / f"{FIRST}.jpg"


def _mask(root: Path) -> Path:
    return root / "tile_1" / "masks" / f"{FIRST}.png"


def _overwrite(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    return path


def _grey(path: Path) -> Path:
    Image.open(path).convert("L").save(path, format="JPEG")
    return path


def _resize(path: Path) -> Path:
    Image.open(path).convert("RGB").resize((64, 64), Image.Resampling.NEAREST).save(path)
    return path


def _unknown_colour(path: Path) -> Path:
    mask = np.array(Image.open(path).convert("RGB"))
    mask[:5, :5] = (1, 2, 3)
    Image.fromarray(mask).save(path)
    return path


# name -> (damage to the copied data, the file or folder the line must name, a word of the reason)
DATA_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "corrupt_image": (lambda r: _overwrite(_image(r), b"\xff\xd8 not really a jpeg" * 9), "cannot read"),
    "truncated_image": (lambda r: _truncate(_image(r)), "cannot read"),
    "grey_image": (lambda r: _grey(_image(r)), "expected 3 bands"),
    "empty_image_file": (lambda r: _overwrite(_image(r), b""), "cannot read"),
    "mask_wrong_size": (lambda r: _resize(_mask(r)), "its mask"),
    "mask_unknown_colour": (lambda r: _unknown_colour(_mask(r)), "unknown mask colour"),
    "corrupt_mask": (lambda r: _overwrite(_mask(r), b"\x89PNG garbage"), "cannot read"),
    "image_without_mask": (lambda r: (_mask(r).unlink(), _image(r))[1], "has no mask"),
    "mask_folder_missing": (lambda r: (shutil.rmtree(r / "tile_1" / "masks"), r / "tile_1" / "masks")[1],
                            "mask folder not found"),
    "image_folder_empty": (lambda r: ([p.unlink() for p in (r / "tile_1" / "images").iterdir()],
                                      r / "tile_1" / "images")[1], "no *.jpg images"),
    "tile_missing": (lambda r: (shutil.rmtree(r / "tile_1"), r / "tile_1" / "images")[1], "image folder not found"),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_training_data(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = dubai_copy(tmp_path / "data")
    damage, reason = DATA_CASES[case]
    named = damage(data)
    cli(capsys, tmp_path, fit_argv(tmp_path / "run", f"data.source.root={data}"), 2, str(named), reason)
    assert not list((tmp_path / "run").rglob("*.*")), "no artefact from a refused run"


def test_one_source_image_cannot_be_split_for_validation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = dubai_copy(tmp_path / "data", images=1)
    cli(capsys, tmp_path, fit_argv(tmp_path / "run", f"data.source.root={data}"), 2, "too few to split")


def test_bad_target_data_is_named_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = dubai_copy(tmp_path / "data")
    _truncate(_image(data))
    target = f"data.targets={{bad: {{dataset: dubai, root: '{data}', tiles: [1]}}}}"
    cli(capsys, tmp_path, fit_argv(tmp_path / "run", target), 2, str(_image(data)))


def test_error_inside_a_dataloader_worker_is_the_same_one_line(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Without the cache nothing is read up front: the worker process meets the truncated file."""
    data = dubai_copy(tmp_path / "data")
    for image in (data / "tile_1" / "images").iterdir():
        _truncate(image)
    argv = fit_argv(tmp_path / "run", f"data.source.root={data}", "data.cache=false", "data.num_workers=1",
                    "data.val_fraction=0", "gate.enabled=false", "train.max_steps=1")
    line = cli(capsys, tmp_path, argv, 2, "cannot read", str(data))
    assert "DataLoader worker" not in line and "Original Traceback" not in line
