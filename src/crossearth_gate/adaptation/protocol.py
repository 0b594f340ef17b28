"""Honest DA protocols: the images adapted to without labels are not the images that are scored."""

from __future__ import annotations

from pathlib import Path

from ..data.catalog import DomainSpec, list_pairs
from ..util.errors import UserError


def check_disjoint(unlabelled: DomainSpec, targets: dict[str, DomainSpec], transductive: bool) -> None:
    """Refuse a test domain that shares image files with the unlabelled training images (unless transductive)."""
    if transductive:
        return
    seen = {image.resolve() for image, _ in list_pairs(unlabelled, labelled=False)}
    for name, spec in targets.items():
        shared = sorted(p for p in (Path(i).resolve() for i, _ in list_pairs(spec)) if p in seen)
        if shared:
            raise UserError(
                f"target {name!r} scores {len(shared)} image(s) that training sees unlabelled, e.g. {shared[0]}: "
                "split them apart (e.g. `subset`) or set adaptation.transductive=true"
            )
