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


def test_fuse_kernel_one_is_a_pointwise_fusion() -> None:
    """With fuse_kernel 1 the fusion is the 1×1 convolution of the concatenated levels (no spatial mixing):
    checked against einsum on the same weights."""
    torch.manual_seed(0)
    head = FPNHead(in_channels=12, num_levels=4, num_classes=3, channels=8, fuse_kernel=1)
    assert head.fuse[0].weight.shape == (8, 32, 1, 1)
    stacked = torch.randn(2, 32, 5, 6)
    expected = torch.einsum("oc,bchw->bohw", head.fuse[0].weight[:, :, 0, 0], stacked)
    torch.testing.assert_close(head.fuse[0](stacked), expected, atol=1e-5, rtol=1e-5)
    features = [torch.randn(1, 12, 4, 4) for _ in range(4)]
    assert head(features).shape == (1, 3, 16, 16)


@pytest.mark.parametrize("options", [{"fuse_kernel": 2}, {"fuse_kernel": 0}, {"fuse_kernel": "3"},
                                     {"fuse_kernel": True}, {"kernel": 1}])
def test_bad_fpn_options_are_one_line_errors(options: dict) -> None:
    from crossearth_gate.heads import build_head
    from crossearth_gate.util.errors import UserError

    with pytest.raises(UserError) as err:
        build_head("fpn", 8, 4, 2, 16, options)
    assert "\n" not in str(err.value) and "head_kwargs" in str(err.value)


def test_fuse_kernel_goes_with_class_weights() -> None:
    from crossearth_gate.heads import build_head

    head = build_head("fpn", 8, 4, 2, 16, {"fuse_kernel": 1}, class_weights=[1.0, 2.0])
    assert head.fuse[0].kernel_size == (1, 1) and head.class_weight.tolist() == [1.0, 2.0]


def test_a_saved_model_keeps_its_fuse_kernel(tmp_path) -> None:
    """The option is part of the saved spec: the reloaded head has the 1×1 fusion and the same outputs."""
    from crossearth_gate.model.artefacts import load_trainable, save_trainable, spec_of
    from crossearth_gate.model.backbone import build_backbone
    from crossearth_gate.model.segmentor import Segmentor
    from crossearth_gate.toolbox.slots import ToolboxConfig

    torch.manual_seed(0)
    model = Segmentor(build_backbone("test_vit", "none", 32), 3, ToolboxConfig(), "fpn", 16,
                      head_kwargs={"fuse_kernel": 1})
    perturb(model.head, seed=2, std=0.2)
    spec = spec_of(model, ["a", "b", "c"], [[0, 0, 0], [1, 1, 1], [2, 2, 2]], 0, 32, "fpn", 16)
    save_trainable(tmp_path / "trainable.safetensors", model, spec)
    loaded, _ = load_trainable(tmp_path / "trainable.safetensors")
    assert loaded.head.fuse[0].kernel_size == (1, 1)
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(images), model.eval()(images))
