"""Per-sample Fisher per slot against an independent brute force, and the state it must leave alone."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor

from crossearth_gate.gating import slot_fisher, slot_gradnorm
from crossearth_gate.util.errors import UserError
from support.slotnet import TinySlotNet, batched, make_data, per_sample_ce


def brute_force(model: TinySlotNet, x: Tensor, y: Tensor) -> dict[str, float]:
    """F̂ per slot the slow obvious way: backward per image, square .grad, sum per slot, average."""
    model = copy.deepcopy(model).eval()
    model.set_active(model.slot_names)
    sums = dict.fromkeys(model.slot_names, 0.0)
    for i in range(len(x)):
        model.zero_grad(set_to_none=True)
        per_sample_ce(model(x[i : i + 1]), y[i : i + 1]).sum().backward()
        for name in model.slot_names:
            sums[name] += sum(float(p.grad.double().pow(2).sum()) for p in model.slot_parameters(name))
    return {name: s / len(x) for name, s in sums.items()}


def squared_mean_gradient(model: TinySlotNet, x: Tensor, y: Tensor) -> dict[str, float]:
    """The WRONG quantity (E g)²: the squared gradient of the batch-mean loss."""
    model = copy.deepcopy(model).eval()
    model.set_active(model.slot_names)
    per_sample_ce(model(x), y).mean().backward()
    return {
        name: sum(float(p.grad.double().pow(2).sum()) for p in model.slot_parameters(name))
        for name in model.slot_names
    }


def assert_close(actual: dict[str, float], expected: dict[str, float], rel: float = 1e-6) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name] == pytest.approx(expected[name], rel=rel, abs=1e-12), name


@pytest.fixture
def model() -> TinySlotNet:
    torch.manual_seed(0)
    return TinySlotNet()


def test_fisher_matches_brute_force_over_partial_batches(model):
    x, y = make_data(9, seed=1)
    pulled = []

    def batches():
        for i, batch in enumerate(batched(x, y, 3)):
            pulled.append(i)
            yield batch

    stats = slot_fisher(model, model, batches(), per_sample_ce, num_samples=7)
    assert stats.count == 7
    assert pulled == [0, 1, 2]  # the third batch is used in part; no batch beyond it is pulled
    assert_close(stats.raw, brute_force(model, x[:7], y[:7]))
    assert all(v > 0 for v in stats.raw.values())


def test_fisher_is_not_the_squared_batch_mean_gradient(model):
    x, y = make_data(6, seed=2)
    raw = slot_fisher(model, model, [(x, y)], per_sample_ce, num_samples=6).raw
    wrong = squared_mean_gradient(model, x, y)
    assert any(abs(raw[n] - wrong[n]) > 0.05 * raw[n] for n in raw)


def test_zero_initialised_up_projection_still_scores(model):
    x, y = make_data(4, seed=3)
    raw = slot_fisher(model, model, [(x, y)], per_sample_ce, num_samples=4).raw
    assert raw["spatial.0"] > 0 and raw["spatial.1"] > 0  # from the up factor; down gets exactly 0


def test_vmap_equals_loop(model):
    x, y = make_data(8, seed=4)
    loop = slot_fisher(model, model, batched(x, y, 3), per_sample_ce, 8)
    vmap = slot_fisher(model, model, batched(x, y, 3), per_sample_ce, 8, method="vmap")
    assert vmap.count == loop.count == 8
    assert_close(vmap.raw, loop.raw)


def test_gradnorm_is_norm_of_mean_per_sample_gradient(model):
    x, y = make_data(5, seed=5)
    stats = slot_gradnorm(model, model, batched(x, y, 2), per_sample_ce, num_samples=5)
    reference = copy.deepcopy(model).eval()
    for i in range(5):  # .grad accumulates the per-sample gradients
        per_sample_ce(reference(x[i : i + 1]), y[i : i + 1]).sum().backward()
    expected = {
        n: sum(float((p.grad.double() / 5).pow(2).sum()) for p in reference.slot_parameters(n)) ** 0.5
        for n in reference.slot_names
    }
    assert stats.count == 5
    assert_close(stats.raw, expected)


def _snapshot(model: TinySlotNet) -> tuple:
    return (
        model.active_slots(),
        [p.requires_grad for p in model.parameters()],
        [m.training for m in model.modules()],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
    )


def _assert_same(before: tuple, after: tuple) -> None:
    assert after[:3] == before[:3]
    for old, new in zip(before[3], after[3], strict=True):
        assert (old is None and new is None) or torch.equal(old, new)


@pytest.mark.parametrize("score", [slot_fisher, slot_gradnorm])
def test_state_is_restored(model, score):
    model.set_active(["semantic.1", "frequency.0"])
    model.train()
    model.drop.eval()  # a submodule in another mode than its parent must come back as it was
    model.head.weight.grad = torch.ones_like(model.head.weight)
    model.slot_parameters("semantic.1")[0].grad = torch.full_like(model.slot_parameters("semantic.1")[0], 2.0)
    before = _snapshot(model)
    x, y = make_data(3, seed=6)
    score(model, model, [(x, y)], per_sample_ce, 3)
    _assert_same(before, _snapshot(model))


def test_state_is_restored_when_scoring_fails(model):
    model.set_active(["spatial.0"])
    before = _snapshot(model)

    def broken_loss(logits: Tensor, target: Tensor) -> Tensor:
        assert model.active_slots() == model.slot_names and not model.training
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        slot_fisher(model, model, [make_data(2, seed=7)], broken_loss, 2)
    _assert_same(before, _snapshot(model))


def test_bad_inputs(model):
    x, y = make_data(2, seed=8)
    with pytest.raises(UserError):
        slot_fisher(model, model, [(x, y)], per_sample_ce, 0)
    with pytest.raises(UserError):
        slot_fisher(model, model, [(x, y)], per_sample_ce, 2, method="magic")
    with pytest.raises(UserError, match="empty"):
        slot_fisher(model, model, [], per_sample_ce, 2)
    with pytest.raises(ValueError, match="one loss per image"):
        slot_fisher(model, model, [(x, y)], lambda logits, target: per_sample_ce(logits, target).mean(), 2)
