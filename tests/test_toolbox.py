"""The RS module toolbox: slot-aware block forward, LoRA on q/v only, slot switching, parameter counts."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crossearth_gate.toolbox.lora import LoRAQKV, QueryValueLoRA, wrap_qkv
from crossearth_gate.toolbox.slots import SLOT_TYPES, Toolbox, ToolboxConfig, activated, run_block
from crossearth_gate.util.errors import UserError
from support.models import TINY_DEPTH, TINY_WIDTH, perturb, randomise_layerscale, tiny_timm_vit

ATOL = 1e-5
GRID = (2, 2)


def vit_and_tokens(kind: str, seed: int = 0) -> tuple[nn.Module, Tensor, int]:
    """A tiny ViT (O(1) LayerScale) and random tokens for a 2×2 grid plus its prefix."""
    vit = tiny_timm_vit(kind, seed=seed)
    randomise_layerscale(vit, seed + 1)
    prefix = vit.num_prefix_tokens
    gen = torch.Generator().manual_seed(seed + 2)
    tokens = torch.randn(2, prefix + GRID[0] * GRID[1], TINY_WIDTH, generator=gen)
    return vit, tokens, prefix


def block_and_tokens(kind: str, seed: int = 0) -> tuple[nn.Module, Tensor, int]:
    """Block 1 of ``vit_and_tokens``'s ViT, its tokens and prefix."""
    vit, tokens, prefix = vit_and_tokens(kind, seed)
    return vit.blocks[1], tokens, prefix


def toolbox(active: list[str] | None = None, block: nn.Module | None = None, **config: object) -> Toolbox:
    """A toolbox for the tiny width/depth with the given active slots (all when None).

    ``block`` is attached as layer 1 (the other layers get copies of it), as a Segmentor attaches its backbone.
    """
    torch.manual_seed(0)
    tb = Toolbox(TINY_WIDTH, TINY_DEPTH, ToolboxConfig(**config))
    if block is not None:
        tb.attach([block if i == 1 else copy.deepcopy(block) for i in range(TINY_DEPTH)])
    if active is not None:
        tb.set_active(active)
    return tb


def post_attention(block: nn.Module, x: Tensor, attn: nn.Module | None = None) -> Tensor:
    """T̂ = x + LS1(attn(norm1(x))), written out independently of run_block."""
    attn = attn or block.attn
    return x + block.ls1(attn(block.norm1(x)))


def lora_formula(x: Tensor, qkv: nn.Linear, lora: QueryValueLoRA) -> Tensor:
    """x W_qkvᵀ + b + s·[B_q A_q x, 0, B_v A_v x], computed on its own (no wrapper, no lora.forward)."""
    base = x @ qkv.weight.t() + qkv.bias
    d = TINY_WIDTH
    dq = x @ (lora.b_q @ lora.a_q).t() * lora.scaling
    dv = x @ (lora.b_v @ lora.a_v).t() * lora.scaling
    return torch.cat([base[..., :d] + dq, base[..., d : 2 * d], base[..., 2 * d :] + dv], dim=-1)


def old_attention_with_lora(attn: nn.Module, x: Tensor, lora: QueryValueLoRA) -> Tensor:
    """The attention forward the toolbox used before it wrapped qkv: the numbers must not have changed."""
    b, n, _ = x.shape
    qkv = F.linear(x, attn.qkv.weight, attn.qkv.bias).reshape(b, n, 3, attn.num_heads, attn.head_dim)
    dq = (x @ lora.a_q.t()) @ lora.b_q.t() * lora.scaling
    dv = (x @ lora.a_v.t()) @ lora.b_v.t() * lora.scaling
    q = qkv[:, :, 0] + dq.reshape(b, n, attn.num_heads, attn.head_dim)
    v = qkv[:, :, 2] + dv.reshape(b, n, attn.num_heads, attn.head_dim)
    q, k, v = (t.transpose(1, 2) for t in (q, qkv[:, :, 1], v))
    out = F.scaled_dot_product_attention(attn.q_norm(q), attn.k_norm(k), v)
    out = out.transpose(1, 2).reshape(b, n, -1)
    return attn.proj(attn.norm(out))


# ---------------------------------------------------------------- block forward equals timm's


@pytest.mark.parametrize("kind", ["dinov2", "plain", "reg", "qknorm"])
def test_run_block_equals_timm_block(kind: str) -> None:
    block, x, prefix = block_and_tokens(kind)
    with torch.no_grad():
        expected = block(x)
        assert not torch.allclose(expected, x, atol=1e-3)  # the block does something
        torch.testing.assert_close(run_block(block, x, 1, GRID, prefix, None), expected, atol=ATOL, rtol=0)
        # no slot active; then every slot active but all zero-initialised: both must reproduce timm's block
        for active in ([], None):
            fresh = copy.deepcopy(block)
            torch.testing.assert_close(run_block(fresh, x, 1, GRID, prefix, toolbox(active, fresh)), expected,
                                       atol=ATOL, rtol=0)


def test_adapter_runs_beside_mlp_on_post_attention_state() -> None:
    block, x, prefix = block_and_tokens("dinov2")
    tb = toolbox(["semantic.1"], block)
    perturb(tb, std=0.2)
    adapter = tb.slot_module("semantic.1")
    with torch.no_grad():
        expected = block(x) + adapter.bottleneck(post_attention(block, x)) * adapter.scale
        out = run_block(block, x, 1, GRID, prefix, tb)
        assert not torch.allclose(out, block(x), atol=1e-4)
        torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


def test_frequency_adapter_runs_after_block() -> None:
    block, x, prefix = block_and_tokens("reg")
    tb = toolbox(["frequency.1"], block)
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
    tb = toolbox([n for n in toolbox().slot_names if not n.endswith(".1")], block)
    perturb(tb, std=0.2)
    with torch.no_grad():
        torch.testing.assert_close(run_block(block, x, 1, GRID, prefix, tb), block(x), atol=ATOL, rtol=0)


# ---------------------------------------------------------------- LoRA wraps qkv: q and v, never k


@pytest.mark.parametrize("alpha", [None, 8.0])
def test_qkv_wrapper_adds_the_query_and_value_deltas_only(alpha: float | None) -> None:
    block, x, _ = block_and_tokens("dinov2")
    base = copy.deepcopy(block.attn.qkv)
    base_weight = block.attn.qkv.weight
    lora = QueryValueLoRA(TINY_WIDTH, 4, alpha=alpha)
    perturb(lora, seed=3, std=0.2)
    names = [n for n, _ in block.attn.named_parameters()]
    wrapper = wrap_qkv(block.attn, lora)
    assert block.attn.qkv is wrapper and wrapper.weight is base_weight and wrapper.lora is lora
    assert [n for n, _ in block.attn.named_parameters()] == names  # qkv.weight, qkv.bias: no LoRA inside
    d = TINY_WIDTH
    with torch.no_grad():
        torch.testing.assert_close(wrapper(x), base(x), atol=0, rtol=0)  # off: exactly the wrapped Linear
        wrapper.enabled = True
        out = wrapper(x)
        torch.testing.assert_close(out, lora_formula(x, base, lora), atol=ATOL, rtol=0)
        torch.testing.assert_close(out[..., d : 2 * d], base(x)[..., d : 2 * d], atol=0, rtol=0)  # k untouched
        assert (out[..., :d] - base(x)[..., :d]).abs().max() > 1e-2
        assert (out[..., 2 * d :] - base(x)[..., 2 * d :]).abs().max() > 1e-2


@pytest.mark.parametrize("kind", ["dinov2", "plain", "reg", "qknorm"])
def test_block_attention_with_the_wrapper_equals_the_old_copied_forward(kind: str) -> None:
    """The block's own attention around the wrapper gives what the toolbox's copy of it gave."""
    block, x, _ = block_and_tokens(kind)
    lora = QueryValueLoRA(TINY_WIDTH, 4, alpha=8.0)
    perturb(lora, seed=3, std=0.2)
    normed = block.norm1(x)
    with torch.no_grad():
        expected = old_attention_with_lora(block.attn, normed, lora)
        wrap_qkv(block.attn, lora).enabled = True
        torch.testing.assert_close(block.attn(normed), expected, atol=ATOL, rtol=0)
        block.attn.fused_attn = False  # timm's explicit softmax path must agree as well
        torch.testing.assert_close(block.attn(normed), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("alpha", [None, 16.0])
def test_lora_merge_matches_unmerged_and_unmerge_restores(alpha: float | None) -> None:
    block, x, prefix = block_and_tokens("dinov2")
    original = copy.deepcopy(block)
    tb = toolbox(["spatial.1"], block, lora_rank=4, lora_alpha=alpha)
    perturb(tb, std=0.2)
    qkv = block.attn.qkv
    with torch.no_grad():
        unmerged = run_block(block, x, 1, GRID, prefix, tb)
        assert not torch.allclose(unmerged, original(x), atol=1e-4)
        qkv.merge()
        qkv.merge()  # idempotent
        torch.testing.assert_close(block(x), unmerged, atol=ATOL, rtol=0)  # merged: the bare block carries it
        torch.testing.assert_close(run_block(block, x, 1, GRID, prefix, tb), unmerged, atol=ATOL, rtol=0)  # once
        d = TINY_WIDTH
        torch.testing.assert_close(qkv.weight[d : 2 * d], original.attn.qkv.weight[d : 2 * d], atol=0, rtol=0)
        qkv.unmerge()
        torch.testing.assert_close(qkv.weight, original.attn.qkv.weight, atol=1e-6, rtol=0)
        torch.testing.assert_close(block(x), original(x), atol=ATOL, rtol=0)
        torch.testing.assert_close(run_block(block, x, 1, GRID, prefix, tb), unmerged, atol=ATOL, rtol=0)


def test_wrapping_keeps_parameter_names_and_refuses_what_it_cannot_wrap() -> None:
    vit, _, _ = vit_and_tokens("dinov2")
    names = list(vit.state_dict())
    tb = toolbox(block=None)
    tb.attach(vit.blocks)
    tb.attach(vit.blocks)  # idempotent
    assert list(vit.state_dict()) == names  # backbone checkpoints and fine-tuned weights keep their keys
    assert all(isinstance(b.attn.qkv, LoRAQKV) for b in vit.blocks)
    assert not any(k.startswith("slots") or ".lora" in k for k in vit.state_dict())
    with pytest.raises(UserError, match="another toolbox"):
        toolbox().attach(vit.blocks)
    with pytest.raises(UserError, match="4 layers but the backbone 3 blocks"):
        toolbox().attach(list(vit.blocks)[:3])
    block = copy.deepcopy(vit.blocks[0])
    block.attn = nn.MultiheadAttention(TINY_WIDTH, 2)
    with pytest.raises(UserError, match="fused qkv"):
        wrap_qkv(block.attn, QueryValueLoRA(TINY_WIDTH, 2))


def test_run_block_needs_an_attached_toolbox() -> None:
    block, x, prefix = block_and_tokens("dinov2")
    with pytest.raises(RuntimeError, match="not attached"):
        run_block(block, x, 1, GRID, prefix, toolbox(["spatial.1"]))


def test_activated_restores_the_active_set_and_flags() -> None:
    tb = toolbox(["spatial.0", "semantic.2"])
    tb.slot_module("semantic.2").bottleneck.down.bias.requires_grad_(False)  # a flag set_active would not give
    flags = {n: p.requires_grad for n, p in tb.named_parameters()}
    with activated(tb, tb.slot_names):
        assert tb.active_slots() == tb.slot_names and all(p.requires_grad for p in tb.parameters())
    assert tb.active_slots() == ["spatial.0", "semantic.2"]
    assert {n: p.requires_grad for n, p in tb.named_parameters()} == flags
    with pytest.raises(ValueError, match="boom"), activated(tb, []):
        raise ValueError("boom")
    assert tb.active_slots() == ["spatial.0", "semantic.2"]
    assert {n: p.requires_grad for n, p in tb.named_parameters()} == flags


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
    vit, x, prefix = vit_and_tokens("dinov2")
    grads = {}
    for std in (0.0, 0.02):
        tb = toolbox(up_init_std=std)
        blocks = copy.deepcopy(vit).blocks
        tb.attach(blocks)
        for layer, block in enumerate(blocks):
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
