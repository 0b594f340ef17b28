"""``crossearth-gate export --format onnx``: the deployable model as ONE ONNX graph for a fixed window.

What goes into the graph is ``merge_for_inference``'s model: LoRA folded into the backbone's ``qkv``,
inactive slots absent (they are skipped by the block forward, so the trace never records them), the
head (FPN, or Mask2Former with its semantic inference inside the graph). Frequency slots run their
low/high split as two real matrix products (``matrix_frequency_split``) instead of complex FFTs. Exact:
the band is symmetric, so the operator is a real matrix, equal to the FFT route to float32 rounding.
Supported: torch's TorchScript exporter has no FFT op at all (``aten::fft_fft2`` is refused), ONNX's DFT
needs complex values carried as a trailing (real, imag) axis, whereas MatMul runs on every runtime and
execution provider. Fast: on a window's token grid (16 x 16 at 224 px, patch 14) the two products cost
about 2·16 multiply-adds per value, nothing beside the blocks.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch

from ..model.artefacts import ModelSpec, load_trainable, model_file
from ..model.merge import merge_for_inference
from ..model.segmentor import Segmentor
from ..toolbox.slots import parse_slot
from ..util.atomic import atomic_write
from ..util.errors import UserError
from .metadata import FORMAT, INPUT, OUTPUT, metadata_of
from .requirements import require

OPSET = 17
FORMATS = ("safetensors", "onnx")


def check_format(name: str) -> str:
    if name not in FORMATS:
        raise UserError(f"--format {name!r}: choose one of {', '.join(FORMATS)}")
    return name


def check_window(window: int, patch: int) -> int:
    """The graph's fixed window: a whole number of backbone patches (the token grid is baked in)."""
    if window < patch or window % patch:
        raise UserError(f"--window {window} must be a whole number of backbone patches ({patch} px)")
    return window


def check_onnx_target(model_path: Path, out: Path) -> None:
    """``out`` ends in .onnx, is not the input, and replaces nothing but an earlier ONNX export."""
    if out.suffix != ".onnx":
        raise UserError(f"--out {out}: an ONNX export must end in .onnx")
    if out.exists() and out.resolve() == model_path.resolve():
        raise UserError(f"--out {out} is the input model file: export to another path")
    if out.exists() and not _is_onnx_export(out):
        raise UserError(f"--out {out} would overwrite a file that is not an earlier ONNX export: "
                        "choose another path or remove it")


def _is_onnx_export(path: Path) -> bool:
    onnx = require("onnx")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - any unreadable file is simply "not an export"
        return False
    return any(p.key == "format" and p.value == FORMAT for p in proto.metadata_props)


def deployable(model: Segmentor) -> tuple[Segmentor, list[str], list[str]]:
    """The merged copy (its frequency splits are matrices); the slots left in its graph and the LoRA slots folded."""
    folded = [n for n in model.toolbox.active_slots() if parse_slot(n)[0] == "spatial"]
    merged = merge_for_inference(model)
    return merged, merged.toolbox.active_slots(), folded


def input_channels(model: Segmentor) -> int:
    """The channels the model's patch embedding reads: 3, or the data's when it was grown (model/bands.py)."""
    return int(model.backbone.vit.patch_embed.proj.in_channels)


def onnx_bytes(model: Segmentor, window: int) -> bytes:
    """The traced graph (batch dimension dynamic, window fixed), serialised."""
    example = torch.zeros(1, input_channels(model), window, window)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # the tracer's notes on shapes it fixes (the window is fixed on purpose); any other warning still shows
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model.eval(), (example,), buffer, dynamo=False, opset_version=OPSET,
                          input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, do_constant_folding=True)
    return buffer.getvalue()


def export_onnx(model_path: Path, out: Path, window: int | None = None, weights: str | None = None) -> ModelSpec:
    """Write ``out``: the model at ``model_path`` as one ONNX graph with its spec in the metadata."""
    onnx = require("onnx")
    require("onnxruntime")  # checked now: an export nobody here can run would be found out too late
    path = model_file(model_path)
    check_onnx_target(path, out)
    model, spec = load_trainable(path, weights)
    size = check_window(spec.img_size if window is None else window, model.backbone.patch_size)
    merged, graph_slots, folded = deployable(model)
    proto = onnx.load_from_string(onnx_bytes(merged, size))
    for key, value in metadata_of(spec, size, graph_slots, folded, input_channels(merged)).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    atomic_write(out, lambda tmp: onnx.save(proto, tmp))
    return spec
