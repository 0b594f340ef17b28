"""Folder layouts of the CrossEarth benchmark releases (CASID, RescueNet) that are not mmseg's img_dir/ann_dir.

Read from the CrossEarth release's dataset configs (Cuzyoung/CrossEarth, ``configs/_base_/datasets``), so a
user can unzip the processed download and point ``root`` at it; a different tree fails with one line.
"""

from __future__ import annotations

from pathlib import Path

from crossearth_gate.util.errors import UserError

# domain key (as configs write it) -> the release's folder name
CASID_DOMAINS = {"sub": "SubMs", "tem": "TemMs", "tms": "TroMs", "trf": "TroRf"}
CASID_SPLITS = {"train": "all_train", "test": "all_test"}
RESCUENET_SPLITS = ("train", "val", "test")

Folders = list[tuple[Path, Path]]


def casid_folders(root: Path, split: str | None, domain: str | None) -> Folders:
    """``root/<SubMs|TemMs|TroMs|TroRf>/all_<split>/image`` with masks in ``label`` (or ``label_id``)."""
    if domain not in CASID_DOMAINS:
        known = ", ".join(CASID_DOMAINS)
        got = "no `domain`" if domain is None else f"domain {domain!r}"
        raise UserError(f"dataset 'casid' needs `domain` set to one of {known}; got {got} for {root}")
    if split not in CASID_SPLITS:
        raise UserError(f"dataset 'casid' has splits {', '.join(CASID_SPLITS)}; got split {split!r} for {root}")
    if not root.is_dir():
        raise UserError(f"dataset folder not found: {root}")
    domain_dir = root / CASID_DOMAINS[domain]
    if not domain_dir.is_dir():
        hint = " (root is one domain's folder: point it at the folder above)" if (root / "all_train").is_dir() else ""
        expected = ", ".join(CASID_DOMAINS.values())
        raise UserError(f"CASID domain folder not found: {domain_dir}; root must hold {expected}{hint}")
    split_dir = domain_dir / CASID_SPLITS[split]
    # The release's TroMs test split names its mask folder label_id (CrossEarth's troms config).
    masks = split_dir / "label"
    if not masks.is_dir() and (split_dir / "label_id").is_dir():
        masks = split_dir / "label_id"
    return [(split_dir / "image", masks)]


def rescuenet_folders(root: Path, split: str | None) -> Folders:
    """``root/<split>-org-img`` with masks in ``root/<split>-label-img``; the benchmark tests on ``test``."""
    split = split or "test"
    if split not in RESCUENET_SPLITS:
        raise UserError(f"dataset 'rescuenet' has splits {', '.join(RESCUENET_SPLITS)}; got {split!r} for {root}")
    if not root.is_dir():
        raise UserError(f"dataset folder not found: {root}")
    return [(root / f"{split}-org-img", root / f"{split}-label-img")]
