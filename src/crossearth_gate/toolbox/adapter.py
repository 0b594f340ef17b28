"""Semantic module: an AdaptFormer-style bottleneck adapter running in parallel with the block's MLP."""

from __future__ import annotations

from torch import Tensor, nn


class Bottleneck(nn.Module):
    """Linear(d→r) → GELU → Linear(r→d) with a zero-initialised up-projection (starts as identity-free 0)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        if hidden < 1:
            raise ValueError(f"bottleneck width must be >= 1, got {hidden}")
        self.down = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.act(self.down(x)))

    def output_weights(self) -> list[nn.Parameter]:
        """The zero-initialised up-projection weight (its bias stays 0)."""
        return [self.up.weight]


class ParallelAdapter(nn.Module):
    """T̂_{i+1} = T̂_i + LS(MLP(norm(T̂_i))) + s·Adapter(T̂_i): the adapter sees the post-attention state.

    Its output is added outside the block's LayerScale (DINOv2's 1e-5 scale would otherwise mute it).
    """

    def __init__(self, dim: int, hidden: int, scale: float = 0.1):
        super().__init__()
        self.bottleneck = Bottleneck(dim, hidden)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return self.bottleneck(x) * self.scale

    def output_weights(self) -> list[nn.Parameter]:
        return self.bottleneck.output_weights()
