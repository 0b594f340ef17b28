"""Lightning checkpoints: written atomically (a kill never corrupts one), and read back into a script's model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import Tensor, nn

from ..util.atomic import atomic_write
from ..util.errors import UserError


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def load_trained_weights(model: nn.Module, state_dict: dict[str, Tensor], source: Path) -> None:
    """Put a Lightning checkpoint's ``model.*`` tensors into ``model`` (a script's own Segmentor).

    Checkpoints leave out the frozen backbone, so only its keys may be missing; any other missing or extra key
    means the checkpoint belongs to another config's model."""
    trained = {key.removeprefix("model."): value for key, value in state_dict.items() if key.startswith("model.")}
    try:
        loaded = model.load_state_dict(trained, strict=False)
    except RuntimeError as err:  # a tensor of another shape (another head, width or kernel)
        detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err))
        raise UserError(f"{source}: not this config's model ({detail})") from None
    foreign = loaded.unexpected_keys + [key for key in loaded.missing_keys if not key.startswith("backbone.vit.")]
    if foreign:
        raise UserError(f"{source}: not this config's model ({foreign[:3]})")
