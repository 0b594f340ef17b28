"""The FPN head: projecting before resampling gives what the resample-then-project formula gave."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from crossearth_gate.heads.fpn import FPNHead
from support.models import perturb


def reference_forward(head: FPNHead, features: list[Tensor]) -> Tensor:
    """The earlier formula, written out: resample the full-width features, THEN the 1×1 lateral."""
    base = features[0].shape[-2:]
    laterals = []
    for feat, lateral, scale in zip(features, head.lateral, head.scales, strict=True):
        size = (max(1, round(base[0] * scale)), max(1, round(base[1] * scale)))
        laterals.append(lateral(F.interpolate(feat, size=size, mode="bilinear", align_corners=False)))
    for i in range(len(laterals) - 1, 0, -1):
        laterals[i - 1] = laterals[i - 1] + F.interpolate(
            laterals[i], size=laterals[i - 1].shape[-2:], mode="bilinear", align_corners=False
        )
    finest = laterals[0].shape[-2:]
    outs = [F.interpolate(s(lat), size=finest, mode="bilinear", align_corners=False)
            for s, lat in zip(head.smooth, laterals, strict=True)]
    return head.classifier(head.fuse(torch.cat(outs, dim=1)))


@pytest.mark.parametrize(("grid", "levels"), [((16, 16), 4), ((5, 7), 4), ((9, 4), 2), ((1, 1), 3)])
def test_lean_head_equals_resample_then_project(grid: tuple[int, int], levels: int) -> None:
    torch.manual_seed(0)
    head = FPNHead(in_channels=48, num_levels=levels, num_classes=5, channels=16)
    perturb(head, seed=3, std=0.2)
    head.eval()
    gen = torch.Generator().manual_seed(1)
    features = [torch.randn(2, 48, *grid, generator=gen) for _ in range(levels)]
    with torch.no_grad():
        out = head(features)
        ref = reference_forward(head, features)
    assert out.shape == (2, 5, grid[0] * 4, grid[1] * 4)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_lean_head_gradients_match_the_reference() -> None:
    torch.manual_seed(0)
    head = FPNHead(in_channels=24, num_levels=4, num_classes=3, channels=8)
    features = [torch.randn(1, 24, 6, 6, requires_grad=True) for _ in range(4)]
    head(features).square().mean().backward()
    lean = [f.grad.clone() for f in features]
    for f in features:
        f.grad = None
    reference_forward(head, features).square().mean().backward()
    for got, want in zip(lean, (f.grad for f in features), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
