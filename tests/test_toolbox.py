"""The RS module toolbox: slot-aware block forward, LoRA on q/v only, slot switching, parameter counts."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crossearth_gate.toolbox import slots
from crossearth_gate.toolbox.lora import QueryValueLoRA
from crossearth_gate.toolbox.slots import (
    SLOT_TYPES,
    Toolbox,
    ToolboxConfig,
    _attention_with_lora,
    check_attention_supported,
    run_block,
)
from crossearth_gate.util.errors import UserError
from helpers import TINY_DEPTH, TINY_WIDTH, perturb, randomise_layerscale, tiny_timm_vit

ATOL = 1e-5
GRID = (2, 2)


def block_and_tokens(kind: str, seed: int = 0) -> tuple[nn.Module, Tensor, int]:
    """Block 1 of a tiny ViT (O(1) LayerScale) and random tokens for a 2×2 grid plus its prefix."""
    vit = tiny_timm_vit(kind, seed=seed)
    randomise_layerscale(vit, seed + 1)
    prefix = vit.num_prefix_tokens
    gen = torch.Generator().manual_seed(seed + 2)
    tokens = torch.randn(2, prefix + GRID[0] * GRID[1], TINY_WIDTH, generator=gen)
    return vit.blocks[1], tokens, prefix


def toolbox(active: list[str] | None = None, **config: object) -> Toolbox:
    """A toolbox for the tiny width/depth with the given active slots (all when None)."""
    torch.manual_seed(0)
    tb = Toolbox(TINY_WIDTH, TINY_DEPTH, ToolboxConfig(**config))
    if active is not None:
        tb.set_active(active)
    return tb


def post_attention(block: nn.Module, x: Tensor, attn: nn.Module | None = None) -> Tensor:
    """T̂ = x + LS1(attn(norm1(x))), written out independently of run_block."""
    attn = attn or block.attn
    return x + block.ls1(attn(block.norm1(x)))


# ---------------------------------------------------------------- block forward equals timm's


@pytest.mark.parametrize("kind", ["dinov2", "plain", "reg", "qknorm"])
def test_zero_lora_attention_equals_timm(kind: str) -> None:
    block, x, _ = block_and_tokens(kind)
    normed = block.norm1(x)
    lora = QueryValueLoRA(TINY_WIDTH, 4)
    with torch.no_grad():
        ours = _attention_with_lora(block.attn, normed, lora)
        torch.testing.assert_close(ours, block.attn(normed), atol=ATOL, rtol=0)
        block.attn.fused_attn = False  # timm's explicit softmax path must agree as well
        torch.testing.assert_close(ours, block.attn(normed), atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", ["dinov2", "plain", "reg", "qknorm"])
def test_run_block_equals_timm_block(kind: str) -> None:
    block, x, prefix = block_and_tokens(kind)
    with torch.no_grad():
        expected = block(x)
        assert not torch.allclose(expected, x, atol=1e-3)  # the block does something
        for tb in (None, toolbox([])):
            torch.testing.assert_close(run_block(block, x, 1, GRID, prefix, tb), expected, atol=ATOL, rtol=0)
        # every slot active but all zero-initialised: the slot-aware path must reproduce timm's block
        torch.testing.assert_close(run_block(block, x, 1, GRID, prefix, toolbox()), expected,
                                   atol=ATOL, rtol=0)


def test_adapter_runs_beside_mlp_on_post_attention_state() -> None:
    block, x, prefix = block_and_tokens("dinov2")
    tb = toolbox(["semantic.1"])
    perturb(tb, std=0.2)
    adapter = tb.slot_module("semantic.1")
    with torch.no_grad():
        expected = block(x) + adapter.bottleneck(post_attention(block, x)) * adapter.scale
        out = run_block(block, x, 1, GRID, prefix, tb)
        assert not torch.allclose(out, block(x), atol=1e-4)
        torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


def test_frequency_adapter_runs_after_block() -> None:
    block, x, prefix = block_and_tokens("reg")
    tb = toolbox(["frequency.1"])
    perturb(tb, std=0.2)
    with torch.no_grad():
        y = block(x)
        expected = y + tb.slot_module("frequency.1")(y, GRID, prefix)
        out = run_block(block, x, 1, GRID, prefix, tb)
        assert not torch.allclose(out, y, atol=1e-4)
        torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
        torch.testing.assert_close(out[:, :prefix], y[:, :prefix], atol=ATOL, rtol=0)


def test_slots_of_other_layers_do_not_act() -> None:
    block, x, prefix = block_and_tokens("dinov2")
    tb = toolbox([n for n in toolbox().slot_names if not n.endswith(".1")])
    perturb(tb, std=0.2)
    with torch.no_grad():
        torch.testing.assert_close(run_block(block, x, 1, GRID, prefix, tb), block(x), atol=ATOL, rtol=0)


# ---------------------------------------------------------------- LoRA: q and v, never k


def capture_qkv(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Record the q, k, v that reach scaled_dot_product_attention inside the slot-aware attention."""
    seen: list[tuple[Tensor, Tensor, Tensor]] = []
    real = F.scaled_dot_product_attention

    def spy(q: Tensor, k: Tensor, v: Tensor, *args: object, **kwargs: object) -> Tensor:
        seen.append((q.clone(), k.clone(), v.clone()))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(slots.F, "scaled_dot_product_attention", spy)
    return seen


def test_lora_changes_query_and_value_only(monkeypatch: pytest.MonkeyPatch) -> None:
    block, x, _ = block_and_tokens("dinov2")
    attn = block.attn
    b, n, _ = x.shape
    lora = QueryValueLoRA(TINY_WIDTH, 4, alpha=8.0)
    zero = copy.deepcopy(lora)
    perturb(lora, seed=3, std=0.2)
    seen = capture_qkv(monkeypatch)
    with torch.no_grad():
        _attention_with_lora(attn, x, zero)
        _attention_with_lora(attn, x, lora)
        (q0, k0, v0), (q1, k1, v1) = seen

        def heads(t: Tensor) -> Tensor:
            return t.reshape(b, n, attn.num_heads, attn.head_dim).transpose(1, 2)

        base = attn.qkv(x)
        d = TINY_WIDTH
        torch.testing.assert_close(k1, heads(base[..., d : 2 * d]), atol=ATOL, rtol=0)
        torch.testing.assert_close(k1, k0, atol=0, rtol=0)
        assert (q1 - q0).abs().max() > 1e-2 and (v1 - v0).abs().max() > 1e-2
        scaling = 8.0 / 4
        dq = x @ (lora.b_q @ lora.a_q).t() * scaling
        dv = x @ (lora.b_v @ lora.a_v).t() * scaling
        torch.testing.assert_close(q1, heads(base[..., :d] + dq), atol=ATOL, rtol=0)
        torch.testing.assert_close(v1, heads(base[..., 2 * d :] + dv), atol=ATOL, rtol=0)


@pytest.mark.parametrize("alpha", [None, 16.0])
def test_lora_merge_matches_unmerged(alpha: float | None) -> None:
    block, x, prefix = block_and_tokens("dinov2")
    tb = toolbox(["spatial.1"], lora_rank=4, lora_alpha=alpha)
    perturb(tb, std=0.2)
    lora = tb.slot_module("spatial.1")
    merged = copy.deepcopy(block)
    with torch.no_grad():
        lora.merge_into(merged.attn.qkv)
        unmerged = run_block(block, x, 1, GRID, prefix, tb)
        assert not torch.allclose(unmerged, block(x), atol=1e-4)
        torch.testing.assert_close(merged(x), unmerged, atol=ATOL, rtol=0)
        # k rows of the fused weight are untouched by the merge
        d = TINY_WIDTH
        torch.testing.assert_close(merged.attn.qkv.weight[d : 2 * d], block.attn.qkv.weight[d : 2 * d],
                                   atol=0, rtol=0)


def test_check_attention_supported_rejects_non_qkv_attention() -> None:
    block, _, _ = block_and_tokens("dinov2")
    check_attention_supported(block)
    block.attn = nn.MultiheadAttention(TINY_WIDTH, 2)
    with pytest.raises(UserError, match="fused-qkv"):
        check_attention_supported(block)


# ---------------------------------------------------------------- switchboard


def test_set_active_toggles_requires_grad_and_module() -> None:
    tb = toolbox()
    assert tb.active_slots() == tb.slot_names
    assert len(tb.slot_names) == 3 * TINY_DEPTH
    tb.set_active(["spatial.2", "frequency.3"])
    assert tb.active_slots() == ["spatial.2", "frequency.3"]
    assert tb.lowest_active_layer() == 2
    for name in tb.slot_names:
        flags = {p.requires_grad for p in tb.slot_parameters(name)}
        assert flags == {name in ("spatial.2", "frequency.3")}, name
    assert tb.module("spatial", 2) is tb.slot_module("spatial.2")
    assert tb.module("spatial", 1) is None and tb.module("semantic", 2) is None
    tb.set_active([])
    assert tb.lowest_active_layer() is None
    assert not any(p.requires_grad for p in tb.parameters())
    tb.set_active(["semantic.0"])
    assert [n for n, p in tb.named_parameters() if p.requires_grad] == [
        "slots.semantic.0.bottleneck.down.weight", "slots.semantic.0.bottleneck.down.bias",
        "slots.semantic.0.bottleneck.up.weight", "slots.semantic.0.bottleneck.up.bias",
    ]


@pytest.mark.parametrize("bad", [["spatial.9"], ["lora.1"], ["spatial"], ["frequency.x"]])
def test_set_active_rejects_unknown_slots(bad: list[str]) -> None:
    with pytest.raises(UserError):
        toolbox().set_active(bad)


def test_types_subset_has_only_those_slots() -> None:
    tb = toolbox(types=("frequency",))
    assert tb.slot_names == [f"frequency.{i}" for i in range(TINY_DEPTH)]
    with pytest.raises(UserError):
        tb.slot_module("spatial.0")
    with pytest.raises(UserError):
        ToolboxConfig(types=("spatial", "temporal"))


def test_state_for_selects_exact_slots() -> None:
    tb = Toolbox(TINY_WIDTH, 12, ToolboxConfig())
    keys = tb.state_for(["spatial.1", "semantic.10"])
    assert sorted(keys) == sorted(
        ["slots.spatial.1.a_q", "slots.spatial.1.b_q", "slots.spatial.1.a_v", "slots.spatial.1.b_v"]
        + [f"slots.semantic.10.bottleneck.{p}" for p in ("down.weight", "down.bias", "up.weight", "up.bias")]
    )


# ---------------------------------------------------------------- parameter counts


def lora_params(d: int) -> int:
    r = d // 16
    return 4 * d * r


def adapter_params(d: int) -> int:
    a = d // 16
    return 2 * d * a + a + d


def frequency_params(d: int) -> int:
    f = d // 32
    return 3 * (2 * d * f + f + d) + (3 * d + 3) + 1


# (embed dim, depth) -> expected totals per type over all layers, also spelled out as numbers
SHAPES = {
    "vit_s": (384, 12, {"spatial": 442_368, "semantic": 226_080, "frequency": 359_904}),
    "vit_b": (768, 12, {"spatial": 1_769_472, "semantic": 894_528, "frequency": 1_383_312}),
    "vit_l": (1024, 24, {"spatial": 6_291_456, "semantic": 3_171_840, "frequency": 4_868_448}),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_parameter_counts_match_closed_form(shape: str) -> None:
    dim, depth, totals = SHAPES[shape]
    tb = Toolbox(dim, depth, ToolboxConfig())
    per_layer = {"spatial": lora_params(dim), "semantic": adapter_params(dim), "frequency": frequency_params(dim)}
    counts = tb.slot_param_counts()
    for name, count in counts.items():
        assert count == per_layer[name.split(".")[0]], name
    for slot_type in SLOT_TYPES:
        total = sum(c for n, c in counts.items() if n.startswith(slot_type + "."))
        assert total == per_layer[slot_type] * depth == totals[slot_type], slot_type
    assert sum(p.numel() for p in tb.parameters()) == sum(totals.values())


def test_vit_l_sizes_follow_paper() -> None:
    assert ToolboxConfig().sizes(1024) == {"lora_rank": 64, "adapter_dim": 64, "frequency_dim": 32}
    assert ToolboxConfig(lora_rank=8).sizes(1024)["lora_rank"] == 8


# ---------------------------------------------------------------- the output matrices' initialisation


def output_weights(tb: Toolbox) -> dict[str, Tensor]:
    return {n: p for n, p in tb.named_parameters() if n.endswith(("b_q", "b_v", "up.weight"))}


def test_zero_start_gives_zero_gradient_upstream_of_the_output_matrices() -> None:
    """Why a selection at step 0 sees only the output matrices: every weight before them gets a 0 gradient."""
    block, x, prefix = block_and_tokens("dinov2")
    grads = {}
    for std in (0.0, 0.02):
        tb = toolbox(up_init_std=std)
        for layer in range(TINY_DEPTH):
            x_out = run_block(block, x, layer, GRID, prefix, tb)
            x_out.square().sum().backward()
        grads[std] = {n: p.grad for n, p in tb.named_parameters() if p.grad is not None}
    upstream = [n for n in grads[0.0] if n.endswith(("a_q", "a_v", "down.weight", "down.bias", "router.weight",
                                                       "router.bias"))]
    assert len(upstream) == TINY_DEPTH * (2 + 2 + 3 * 2 + 2)  # A_q, A_v; adapter down; 3 experts' downs; router
    for name in upstream:
        assert torch.count_nonzero(grads[0.0][name]) == 0, name
        assert torch.count_nonzero(grads[0.02][name]) > 0, name
    for name in output_weights(toolbox()):
        assert torch.count_nonzero(grads[0.0][name]) > 0, name  # the output matrices do learn from step 0


def test_up_init_std_draws_only_the_output_matrices() -> None:
    zero, drawn = toolbox(), toolbox(up_init_std=0.05)
    outputs = output_weights(zero)
    assert len(outputs) == TINY_DEPTH * (2 + 1 + 3)  # B_q, B_v; adapter up; 3 experts' ups
    assert all(torch.count_nonzero(w) == 0 for w in outputs.values())
    values = torch.cat([w.flatten() for n, w in drawn.named_parameters() if n in outputs])
    assert values.mean().abs() < 0.005 and abs(values.std().item() - 0.05) < 0.005  # ~N(0, 0.05²)
    drawn_state = drawn.state_dict()
    for name, value in zero.state_dict().items():  # the draws come after every other initialisation
        if name not in outputs:
            assert torch.equal(value, drawn_state[name]), name
