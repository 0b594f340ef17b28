"""Run-config checks that need more than the config: the backbone's shape, Lightning or the files.

They run before anything is written or trained, so a bad value never costs a half-made run folder or
a traceback minutes into training. The values themselves were checked when the config was built (each
section's ``__post_init__``, cross-section rules in ``RunConfig``); ``check_runtime`` builds the backbone's
skeleton on the meta device (no memory, no weights) to learn its patch size and depth, asks Lightning
about the trainer values, lists every domain's folders (no image is read) and looks at the source
images' sizes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..util.checks import require
from ..util.errors import UserError

if TYPE_CHECKING:
    from .schema import RunConfig

log = logging.getLogger(__name__)

CROP_WARN_FACTOR = 2  # a crop this many times the largest source image is almost all padding


def check_runtime(cfg: RunConfig) -> None:
    """The checks that need the backbone's shape, Lightning or the source images; nothing is written."""
    from ..weights import AUTO, HUB, RANDOM

    weights = cfg.model.weights
    require(weights in (AUTO, HUB, RANDOM) or Path(weights).expanduser().is_file(), "model.weights",
            "must be auto, hub, none or an existing weights file", weights)
    _check_trainer(cfg)
    patch, depth = _backbone_shape(cfg)
    _check_geometry(cfg, patch, depth)
    _warn_crop_size(cfg)


def _check_trainer(cfg: RunConfig) -> None:
    """Lightning's own verdict on accelerator, devices, strategy and precision (a Trainer writes nothing)."""
    import lightning as L

    t = cfg.train
    quiet = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:  # its "GPU available" banners belong to the real run
        logger.setLevel(logging.WARNING)
    try:
        L.Trainer(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
                  precision=t.precision, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, max_steps=1)
    except Exception as err:  # MisconfigurationException, ValueError, TypeError, RuntimeError: all the user's
        reason = " ".join(str(err).split()) or type(err).__name__
        raise UserError(
            f"config train.accelerator/devices/strategy/precision ({t.accelerator!r}, {t.devices!r}, "
            f"{t.strategy!r}, {t.precision!r}) rejected by Lightning: {reason}"
        ) from None
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


def _backbone_shape(cfg: RunConfig) -> tuple[int, int]:
    """Patch size and depth of the configured ViT, from a skeleton on the meta device."""
    import timm
    import torch
    from timm.models import VisionTransformerSAM, is_model_in_modules
    from timm.models.vision_transformer import VisionTransformer

    from ..model.backbone import timm_kwargs

    m = cfg.model
    if m.backbone not in timm.list_models():
        raise UserError(f"config model.backbone: unknown timm model {m.backbone!r} (see timm.list_models('*dinov2*'))")
    kwargs = timm_kwargs(m.backbone, cfg.data.crop_size, m.backbone_kwargs)
    try:
        with torch.device("meta"):
            vit = timm.create_model(m.backbone, pretrained=False, **kwargs)
    except Exception as err:  # TypeError (unknown kwarg), AssertionError/ValueError (inconsistent sizes)
        if not is_model_in_modules(m.backbone, ["vision_transformer", "vision_transformer_sam"]):
            raise UserError(f"config model.backbone: {m.backbone!r} is not a timm VisionTransformer") from None
        reason = " ".join(str(err).split()) or type(err).__name__
        raise UserError(f"config model.backbone_kwargs {m.backbone_kwargs}: timm cannot build {m.backbone} "
                        f"with them ({reason})") from None
    if not isinstance(vit, VisionTransformer | VisionTransformerSAM):
        raise UserError(f"config model.backbone: {m.backbone!r} is not a timm VisionTransformer")
    require(m.gsd is None or (isinstance(vit, VisionTransformer) and vit.has_class_token
                              and vit.num_prefix_tokens == 1), "model.gsd",
            "applies to Scale-MAE's ViT (one class token, no registers) only", m.gsd)
    if not len(vit.blocks):
        raise UserError(f"config model.backbone_kwargs {m.backbone_kwargs}: builds {m.backbone} without blocks")
    patch = vit.patch_embed.patch_size
    return (patch[0] if isinstance(patch, tuple) else patch), len(vit.blocks)


def _check_geometry(cfg: RunConfig, patch: int, depth: int) -> None:
    """Crop and eval window are whole patches; out_indices, k and the budget fit the backbone."""
    crop = cfg.data.crop_size
    require(crop % patch == 0, "data.crop_size", f"must be a multiple of the backbone patch size {patch}", crop)
    window = cfg.eval.window or crop
    require(window % patch == 0, "eval.window", f"must be a multiple of the backbone patch size {patch}", window)
    stride = cfg.eval.stride
    require(stride is None or stride <= window, "eval.stride", f"must be <= the eval window {window}", stride)
    indices = cfg.model.out_indices
    require(indices is None or (bool(indices) and all(0 <= i < depth for i in indices)), "model.out_indices",
            f"must be block indices in 0..{depth - 1}", indices)
    g = cfg.gate
    if not g.enabled:
        return
    slots = len(cfg.toolbox.types) * depth
    require(g.k <= 1 or g.k <= slots, "gate.k", f"asks for more slots than the {slots} there are", g.k)
    lowest = g.budget.lowest_block
    require(lowest is None or lowest < depth, "gate.budget.lowest_block", f"must be < the depth {depth}", lowest)


def _source_images(cfg: RunConfig) -> list[Path]:
    """The source images, after checking that every domain's folders and pairs exist (listing, no reading)."""
    from ..data.catalog import list_pairs

    d = cfg.data
    for spec in (d.val, *d.targets.values()):
        if spec is not None:
            list_pairs(spec)
    if d.unlabelled_target is not None:
        list_pairs(d.unlabelled_target, labelled=False)
    return [image for image, _ in list_pairs(d.source)]


def _warn_crop_size(cfg: RunConfig) -> None:
    """A crop far larger than every source image trains mostly on padding: legal, but almost surely a slip."""
    from PIL import Image

    largest = 0
    for image in _source_images(cfg):
        try:
            with Image.open(image) as im:
                largest = max(largest, *im.size)
        except OSError:
            return  # the data module names the unreadable file
    if largest and cfg.data.crop_size > CROP_WARN_FACTOR * largest:
        log.warning("data.crop_size %d is more than %dx the largest source image (%d px): crops are mostly padding",
                    cfg.data.crop_size, CROP_WARN_FACTOR, largest)

