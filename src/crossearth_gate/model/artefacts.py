"""Trained-model artefacts: head + toolbox weights in safetensors with everything needed to rebuild them.

The frozen backbone is never saved: it is rebuilt from its name and weight source (for random-init
backbones, from a recorded seed), so an artefact is a few MB even for ViT-L.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ..toolbox.slots import ToolboxConfig
from ..util.atomic import atomic_write, atomic_write_json
from ..util.errors import UserError
from .backbone import FrozenViT, build_backbone
from .bands import band_kernels
from .segmentor import Segmentor

FORMAT = "crossearth-gate/1"
TRAINABLE_FILE = "trainable.safetensors"


def model_file(path: Path) -> Path:
    """A run directory's trainable weights, or the given file itself."""
    return path / TRAINABLE_FILE if path.is_dir() else path


@dataclass
class ModelSpec:
    """Everything besides the weights that rebuilds a trained segmentor (also the export's JSON sidecar)."""

    backbone: str
    backbone_weights: str
    backbone_seed: int
    img_size: int
    out_indices: list[int]
    head: str
    head_channels: int
    finetune_backbone: bool
    toolbox: dict[str, Any]
    active: list[str]
    classes: list[str]
    palette: list[list[int]]
    mean: list[float]
    std: list[float]
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    backbone_sha256: str | None = None  # of the weights file trained on (None: random init or unknown)
    head_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. Mask2Former's num_queries
    band_kernels: list[int] | None = None  # per input channel: pretrained RGB kernel 0/1/2 or -1 (None: RGB)
    gsd: float | None = None  # Scale-MAE's ground-sample distance (None: the backbone's own positions)
    # how pixels were read and normalised (bands, nodata, per-channel statistics); None: 8-bit RGB, ImageNet's
    radiometry: dict[str, Any] | None = None

    def build(self, weights: str | None = None) -> Segmentor:
        """A fresh segmentor with this spec (backbone weights from ``weights`` or the recorded source).

        With the recorded source, the resolved file must be the one trained on (same sha256): ``auto`` on
        another machine could otherwise silently serve other weights to adapters trained for these.
        """
        source = weights or self.backbone_weights
        backbone = build_seeded_backbone(
            self.backbone, source, self.img_size, self.out_indices, self.backbone_seed, self.backbone_kwargs, self.gsd
        )
        served = backbone.info.weights_sha256
        if weights is None and self.backbone_sha256 and served and served != self.backbone_sha256:
            raise UserError(
                f"backbone weights {source!r} resolved to a file (sha256 {served[:12]}…) other than the one this "
                f"model was trained on ({self.backbone_sha256[:12]}…): pass that file with --weights"
            )
        toolbox = ToolboxConfig(**{**self.toolbox, "types": tuple(self.toolbox["types"])})
        model = Segmentor(backbone, len(self.classes), toolbox, self.head, self.head_channels,
                          self.finetune_backbone, self.head_kwargs, self.band_kernels)
        model.toolbox.set_active(self.active)
        return model


def build_seeded_backbone(
    name: str,
    weights: str,
    img_size: int,
    out_indices: list[int] | None,
    seed: int,
    model_kwargs: dict[str, Any] | None = None,
    gsd: float | None = None,
) -> FrozenViT:
    """Random-init backbones are only reproducible from a seed: fork the RNG so training seeds stay intact."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_backbone(name, weights, img_size, out_indices, model_kwargs, gsd)


def spec_of(model: Segmentor, classes: list[str], palette: list, backbone_seed: int, img_size: int,
            head: str, head_channels: int, backbone_kwargs: dict[str, Any] | None = None,
            radiometry: dict[str, Any] | None = None) -> ModelSpec:
    info = model.backbone.info
    tb = asdict(model.toolbox.config)
    tb["types"] = list(tb["types"])
    return ModelSpec(
        backbone=info.name, backbone_weights=info.weights, backbone_seed=backbone_seed, img_size=img_size,
        out_indices=list(model.backbone.out_indices), head=head, head_channels=head_channels,
        finetune_backbone=model.backbone.finetune, toolbox=tb, active=model.toolbox.active_slots(),
        classes=list(classes), palette=[list(c) for c in palette], mean=list(info.mean), std=list(info.std),
        backbone_kwargs=dict(backbone_kwargs or {}),
        backbone_sha256=info.weights_sha256,
        head_kwargs=dict(model.head_kwargs),
        band_kernels=band_kernels(model.backbone.vit),
        gsd=info.gsd,
        radiometry=radiometry,
    )


def _slot_of(key: str) -> str | None:
    """``toolbox.slots.spatial.3.b_q`` → ``spatial.3``; None for keys outside the toolbox."""
    parts = key.split(".")
    return f"{parts[2]}.{parts[3]}" if parts[0] == "toolbox" and parts[1] == "slots" else None


def save_trainable(path: Path, model: Segmentor, spec: ModelSpec, slots: Iterable[str] | None = None) -> Path:
    """Write the trainable weights + spec (as safetensors metadata) atomically.

    ``slots``: the slots that were ever trained (None: all); the others still hold their initial
    weights and are left out.
    """
    keep = None if slots is None else set(slots)
    state = {k: v.detach().contiguous().cpu() for k, v in model.trainable_state().items()
             if keep is None or _slot_of(k) in (None, *keep)}
    metadata = {"format": FORMAT, "spec": json.dumps(asdict(spec))}
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def read_spec(path: Path) -> ModelSpec:
    if not path.is_file():
        raise UserError(f"{path}: model file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable safetensors file ({err})") from err
    sidecar = path.with_suffix(".json")
    if metadata.get("format") == FORMAT:
        raw = json.loads(metadata["spec"])
    elif sidecar.is_file():
        raw = json.loads(sidecar.read_text())
    else:
        raise UserError(f"{path}: no crossearth-gate model spec in its metadata and no {sidecar.name} beside it")
    try:
        return ModelSpec(**raw)
    except TypeError as err:
        raise UserError(f"{path}: model spec does not match this version ({err})") from err


def load_trainable(path: Path, weights: str | None = None) -> tuple[Segmentor, ModelSpec]:
    """Rebuild the segmentor from its spec and load the saved weights strictly (clear error on mismatch)."""
    spec = read_spec(path)
    model = spec.build(weights)
    state = load_file(str(path))
    expected = model.trainable_state()
    untrained = {k for k in expected if (slot := _slot_of(k)) is not None and slot not in spec.active}
    missing = sorted(set(expected) - set(state) - untrained)  # slots never trained are not saved
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise UserError(
            f"{path}: weights do not match the model built from its spec "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise UserError(f"{path}: {key} has shape {tuple(value.shape)}, model expects {tuple(expected[key].shape)}")
    model.load_state_dict(state, strict=False)
    model.eval()
    return model, spec


def export_model(model_path: Path, out: Path) -> tuple[Path, Path]:
    """One safetensors file with its spec as a JSON sidecar (backbone, slots, active set, classes, ...).

    The sidecar is written before the weights are renamed into place, so a failed write replaces neither.
    """
    sidecar = _export_targets(model_path, out)
    spec = read_spec(model_path)
    state = load_file(str(model_path))

    def write(tmp: str) -> None:
        save_file(state, tmp, metadata={"format": FORMAT, "spec": json.dumps(asdict(spec))})
        atomic_write_json(sidecar, asdict(spec))

    atomic_write(out, write)
    return out, sidecar


def _export_targets(model_path: Path, out: Path) -> Path:
    """The sidecar path; refuses an ``out`` that is the input or would replace anything but an earlier export."""
    if out.suffix != ".safetensors":
        raise UserError(f"--out {out}: must end in .safetensors (the JSON sidecar goes beside it)")
    sidecar = out.with_suffix(".json")
    if out.resolve() == model_path.resolve():
        raise UserError(f"--out {out} is the input model file: export to another path")
    existing = [path for path in (out, sidecar) if path.exists()]
    if existing and not _is_export(out, sidecar):
        raise UserError(f"--out {out} would overwrite {existing[0]}, which is not an earlier export: "
                        "choose another path or remove it")
    return sidecar


def _is_export(weights: Path, sidecar: Path) -> bool:
    """Both files exist and hold the same spec: the pair an earlier export wrote (a run's files never are)."""
    if not (weights.is_file() and sidecar.is_file()):
        return False
    try:
        with safe_open(str(weights), framework="pt") as f:
            metadata = f.metadata() or {}
        return metadata.get("format") == FORMAT and json.loads(metadata["spec"]) == json.loads(sidecar.read_text())
    except (SafetensorError, OSError, ValueError, KeyError):
        return False
