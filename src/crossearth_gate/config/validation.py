"""Run-config checks: every value the model, Lightning or the data depend on, refused in one line.

They run before anything is written or trained, so a bad value never costs a half-made run folder or
a traceback minutes into training. ``check_values`` is cheap (plain Python, called by ``load_config``);
``check_runtime`` builds the backbone's skeleton on the meta device (no memory, no weights) to learn its
patch size and depth, asks Lightning about the trainer values, lists every domain's folders (no image is
read) and looks at the source images' sizes.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..util.errors import UserError

if TYPE_CHECKING:
    from .schema import RunConfig

log = logging.getLogger(__name__)

FISHER_METHODS = ("loop", "vmap")
MAX_SEED = 2**32 - 1  # numpy's and Lightning's seed range; beyond it Lightning silently picks a random seed
CROP_WARN_FACTOR = 2  # a crop this many times the largest source image is almost all padding


def _require(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise UserError(f"config {key}: {rule}, got {value!r}")


def _at_least(value: float, low: float, key: str) -> None:
    _require(math.isfinite(value) and value >= low, key, f"must be >= {low:g}", value)


def _optional_at_least(value: float | None, low: float, key: str) -> None:
    if value is not None:
        _at_least(value, low, key)


def _check_gate_k(k: float) -> None:
    """An integer count (``3``, ``3.0``) or a fraction in (0, 1]; ``2.5`` would silently train 2 slots."""
    ok = math.isfinite(k) and (0 < k <= 1 or (k > 1 and k == int(k)))
    _require(ok, "gate.k", "must be an integer count of slots or a fraction in (0, 1]", k)


def check_values(cfg: RunConfig) -> None:
    """Ranges and choices of every value that needs no model, data or Lightning to check."""
    from ..gating.selection import SELECTORS
    from ..model.inference import BLEND_MODES

    _require(bool(cfg.name) and "/" not in cfg.name and cfg.name not in (".", ".."), "name",
             "must be a plain folder name (runs/<name>)", cfg.name)
    d = cfg.data
    _at_least(d.crop_size, 1, "data.crop_size")
    scales = list(d.scale_range)
    _require(len(scales) == 2 and 0 < scales[0] <= scales[1] < math.inf, "data.scale_range",
             "must be [min, max] with 0 < min <= max", scales)
    _at_least(d.batch_size, 1, "data.batch_size")
    _at_least(d.num_workers, 0, "data.num_workers")
    _require(0 <= d.val_fraction < 1, "data.val_fraction", "must be in [0, 1)", d.val_fraction)
    domains = [d.source, d.val, d.unlabelled_target, *d.targets.values()]
    for spec in (s for s in domains if s is not None):
        spec.info  # noqa: B018  (resolving a dataset definition checks its classes, labels and bands)

    m = cfg.model
    _at_least(m.head_channels, 1, "model.head_channels")
    _require(bool(m.weights), "model.weights", "must be auto, hub, none or a weights file", m.weights)
    _require(m.gsd is None or (math.isfinite(m.gsd) and m.gsd > 0), "model.gsd", "must be > 0 (metres per pixel)",
             m.gsd)

    t = cfg.toolbox
    for key in ("lora_rank", "adapter_dim", "frequency_dim"):
        _optional_at_least(getattr(t, key), 1, f"toolbox.{key}")
    _require(t.lora_alpha is None or (math.isfinite(t.lora_alpha) and t.lora_alpha > 0), "toolbox.lora_alpha",
             "must be > 0", t.lora_alpha)
    _require(0 < t.frequency_cutoff <= 1, "toolbox.frequency_cutoff", "must be in (0, 1]", t.frequency_cutoff)
    for key in ("adapter_scale", "frequency_scale_init"):
        _require(math.isfinite(getattr(t, key)), f"toolbox.{key}", "must be finite", getattr(t, key))
    _require(math.isfinite(t.up_init_std) and t.up_init_std >= 0, "toolbox.up_init_std", "must be >= 0",
             t.up_init_std)

    g = cfg.gate
    _require(g.selector in SELECTORS, "gate.selector", f"must be one of {list(SELECTORS)}", g.selector)
    _check_gate_k(g.k)
    _at_least(g.every, 1, "gate.every")
    _at_least(g.warmup, 0, "gate.warmup")
    _at_least(g.num_samples, 1, "gate.num_samples")
    _require(g.fisher_method in FISHER_METHODS, "gate.fisher_method", f"must be one of {list(FISHER_METHODS)}",
             g.fisher_method)
    _require(not g.enabled or bool(t.types), "gate.enabled", "needs toolbox.types to give slots to select", True)

    tr = cfg.train
    _at_least(tr.max_steps, 1, "train.max_steps")
    for key in ("lr", "weight_decay", "poly_power"):
        _at_least(getattr(tr, key), 0, f"train.{key}")
    _at_least(tr.warmup_steps, 0, "train.warmup_steps")
    _at_least(tr.val_every, 1, "train.val_every")
    _at_least(tr.log_every, 1, "train.log_every")
    _require(0 <= tr.seed <= MAX_SEED, "train.seed", f"must be in [0, {MAX_SEED}]", tr.seed)
    _at_least(tr.num_nodes, 1, "train.num_nodes")

    e = cfg.eval
    _optional_at_least(e.window, 1, "eval.window")
    _optional_at_least(e.stride, 1, "eval.stride")
    _at_least(e.batch_size, 1, "eval.batch_size")
    _require(e.blend in BLEND_MODES, "eval.blend", f"must be one of {list(BLEND_MODES)}", e.blend)
    _at_least(e.samples_per_domain, 0, "eval.samples_per_domain")


def check_runtime(cfg: RunConfig) -> None:
    """The checks that need the backbone's shape, Lightning or the source images; nothing is written."""
    from ..heads import HEADS
    from ..weights import AUTO, HUB, RANDOM

    _require(cfg.model.head in HEADS, "model.head", f"must be one of {sorted(HEADS)}", cfg.model.head)
    weights = cfg.model.weights
    _require(weights in (AUTO, HUB, RANDOM) or Path(weights).expanduser().is_file(), "model.weights",
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
    _require(m.gsd is None or (isinstance(vit, VisionTransformer) and vit.has_class_token
                               and vit.num_prefix_tokens == 1), "model.gsd",
             "applies to Scale-MAE's ViT (one class token, no registers) only", m.gsd)
    if not len(vit.blocks):
        raise UserError(f"config model.backbone_kwargs {m.backbone_kwargs}: builds {m.backbone} without blocks")
    patch = vit.patch_embed.patch_size
    return (patch[0] if isinstance(patch, tuple) else patch), len(vit.blocks)


def _check_geometry(cfg: RunConfig, patch: int, depth: int) -> None:
    """Crop and eval window are whole patches; out_indices, k and the budget fit the backbone."""
    crop = cfg.data.crop_size
    _require(crop % patch == 0, "data.crop_size", f"must be a multiple of the backbone patch size {patch}", crop)
    window = cfg.eval.window or crop
    _require(window % patch == 0, "eval.window", f"must be a multiple of the backbone patch size {patch}", window)
    stride = cfg.eval.stride
    _require(stride is None or stride <= window, "eval.stride", f"must be <= the eval window {window}", stride)
    indices = cfg.model.out_indices
    _require(indices is None or (bool(indices) and all(0 <= i < depth for i in indices)), "model.out_indices",
             f"must be block indices in 0..{depth - 1}", indices)
    g = cfg.gate
    if not g.enabled:
        return
    slots = len(cfg.toolbox.types) * depth
    _require(g.k <= 1 or g.k <= slots, "gate.k", f"asks for more slots than the {slots} there are", g.k)
    lowest = g.budget.lowest_block
    _require(lowest is None or lowest < depth, "gate.budget.lowest_block", f"must be < the depth {depth}", lowest)


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

