"""Tiny fixture trees in the real folder layouts of the benchmark releases, under one $CEG_DATA root."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from crossearth_gate.data.layouts import CASID_DOMAINS

SIZE = 64  # pixels: above the tiny runs' 56 crop


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def rgb(seed: int, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def labels(seed: int, low: int, high: int, size: int = SIZE) -> np.ndarray:
    """Raw label ids in [low, high] with a corner of 255 (ignore in every release)."""
    mask = np.random.default_rng(seed + 1000).integers(low, high + 1, (size, size))
    mask[:4, :4] = 255
    return mask


def write_mmseg(root: Path, split: str, n: int, high: int, seed: int = 0) -> Path:
    """``img_dir/<split>/*.png`` and ``ann_dir/<split>/*.png`` with ids 0..high (0 = ignore after reduction)."""
    for i in range(n):
        save(root / "img_dir" / split / f"2_10_{i}.png", rgb(seed + i))
        save(root / "ann_dir" / split / f"2_10_{i}.png", labels(seed + i, 0, high))
    return root


def write_casid(root: Path, domain: str, split: str, n: int, mask_folder: str = "label", seed: int = 0) -> Path:
    """``<Domain>/all_<split>/image/x.png`` and ``.../<mask_folder>/x-label.png`` with ids 0..4."""
    split_dir = root / CASID_DOMAINS[domain] / f"all_{split}"
    for i in range(n):
        save(split_dir / "image" / f"{domain}_{i}.png", rgb(seed + i))
        save(split_dir / mask_folder / f"{domain}_{i}-label.png", labels(seed + i, 0, 4))
    return root


def write_rescuenet(root: Path, split: str, n: int, seed: int = 0) -> Path:
    """``<split>-org-img/x.jpg`` and ``<split>-label-img/x_lab.png`` with ids 0..5 (0 = ignore)."""
    for i in range(n):
        Image.fromarray(rgb(seed + i)).save(_mkdir(root / f"{split}-org-img") / f"{10800 + i}.jpg")
        save(root / f"{split}-label-img" / f"{10800 + i}_lab.png", labels(seed + i, 0, 5))
    return root


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_benchmark_tree(root: Path, n: int = 3) -> Path:
    """Every dataset the configs under configs/benchmarks read, where they read it from $CEG_DATA."""
    for domain in CASID_DOMAINS:
        write_casid(root / "CASID", domain, "train", n, seed=1)
        write_casid(root / "CASID", domain, "test", 1, mask_folder="label_id" if domain == "tms" else "label", seed=2)
    write_rescuenet(root / "RescueNet", "test", 1, seed=3)
    for sensor in ("RGB", "IRRG"):
        for split in ("train", "val"):
            write_mmseg(root / "Potsdam_Res" / sensor, split, n if split == "train" else 1, 5, seed=4)
    for name in ("potsdam", "vaihingen"):
        for split in ("train", "val"):
            write_mmseg(root / name, split, n if split == "train" else 1, 6, seed=5)
    for name in ("rural", "urban"):
        for split in ("train", "val"):
            write_mmseg(root / "loveda" / name, split, n if split == "train" else 1, 7, seed=6)
    return root
