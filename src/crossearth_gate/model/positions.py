"""Scale-MAE's ground-sample-distance-aware sin-cos position embedding, for any h×w grid.

A patch at column x and row y gets [sincos(x·gsd), sincos(y·gsd)], each half of the width, with
sincos(p) = [sin(p·ω_k), cos(p·ω_k)] and ω_k = 10000^(−k/(C/4)), k < C/4: the MAE sin-cos embedding whose
grid is measured in ground distance instead of patches, so the same object size gets the same positions
at every resolution. At gsd 1 it is the fixed embedding MAE and SatMAE store in ``pos_embed``. The class
token's position is zero.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..util.errors import UserError


def _sincos(positions: Tensor, width: int) -> Tensor:
    omega = 1.0 / 10000 ** (torch.arange(width // 2, dtype=torch.float32) / (width / 2.0))
    angles = positions.reshape(-1, 1) * omega
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def gsd_sincos(height: int, width: int, dim: int, gsd: float) -> Tensor:
    """(height·width, dim) position embeddings in row-major patch order."""
    if dim % 4:
        raise UserError(f"the GSD position embedding needs a width divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                                indexing="ij")
    scale = torch.tensor(gsd, dtype=torch.float32)
    return torch.cat([_sincos(cols * scale, dim // 2), _sincos(rows * scale, dim // 2)], dim=1)
