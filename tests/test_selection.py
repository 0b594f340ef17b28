"""Normalisation, k, top-k with deterministic ties, and the selectors."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from crossearth_gate.gating import (
    FisherSelector,
    GradNormSelector,
    RandomSelector,
    make_selector,
    normalize_per_type,
    resolve_k,
    top_k,
)
from crossearth_gate.util.errors import UserError
from support.slotnet import TinySlotNet, make_data, per_sample_ce

RAW = {
    "spatial.0": 1.0,
    "spatial.1": 3.0,
    "semantic.0": 2.0,
    "semantic.1": 2.0,
    "frequency.0": 0.0,
    "frequency.1": 0.0,
}
# By hand: spatial total 4 -> 1/4, 3/4; semantic total 4 -> 1/2, 1/2; frequency total 0 -> zeros.
NORMALIZED = {
    "spatial.0": 0.25,
    "spatial.1": 0.75,
    "semantic.0": 0.5,
    "semantic.1": 0.5,
    "frequency.0": 0.0,
    "frequency.1": 0.0,
}


def test_normalize_per_type_hand_example():
    assert normalize_per_type(RAW) == NORMALIZED


def test_top_k_hand_example():
    assert top_k(NORMALIZED, 1) == ["spatial.1"]
    # 0.5 tie between semantic.0 and semantic.1: the lower layer wins.
    assert top_k(NORMALIZED, 2) == ["spatial.1", "semantic.0"]
    assert top_k(NORMALIZED, 4) == ["spatial.0", "spatial.1", "semantic.0", "semantic.1"]
    # zeros tie: frequency.0 before frequency.1.
    assert top_k(NORMALIZED, 5) == ["spatial.0", "spatial.1", "semantic.0", "semantic.1", "frequency.0"]


def test_ties_follow_type_order_then_layer():
    scores = {"frequency.0": 0.5, "semantic.0": 0.5, "spatial.2": 0.5, "spatial.1": 0.1}
    assert top_k(scores, 1) == ["spatial.2"]
    assert top_k(scores, 2) == ["spatial.2", "semantic.0"]


def test_results_do_not_depend_on_dict_order():
    raw = {"spatial.0": 0.1, "spatial.1": 0.2, "spatial.2": 0.3, "semantic.0": 0.3, "semantic.1": 0.3,
           "frequency.0": 0.7, "frequency.1": 0.1}
    expected_norm = normalize_per_type(raw)
    expected_top = top_k(expected_norm, 3)
    for order in itertools.islice(itertools.permutations(raw), 0, None, 97):
        shuffled = {name: raw[name] for name in order}
        norm = normalize_per_type(shuffled)
        assert norm == expected_norm and list(norm) == list(expected_norm)
        assert top_k(norm, 3) == expected_top


def test_top_k_rejects_bad_k_and_nan():
    with pytest.raises(UserError):
        top_k(NORMALIZED, 0)
    with pytest.raises(UserError):
        top_k(NORMALIZED, 7)
    with pytest.raises(UserError, match="non-finite"):
        top_k({**NORMALIZED, "spatial.0": math.nan}, 2)


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [(0.25, 72, 18), (1.0, 6, 6), (0.01, 6, 1), (0.5, 5, 3), (0.3, 6, 2), (3, 6, 3), (1, 1, 1), (6, 6, 6)],
)
def test_resolve_k(k, n, expected):
    assert resolve_k(k, n) == expected


@pytest.mark.parametrize(("k", "n"), [(0, 6), (7, 6), (-1, 6), (0.0, 6), (1.5, 6), (18.0, 72), (True, 6),
                                      ("3", 6), (math.nan, 6), (None, 6), (2, 0)])
def test_resolve_k_rejects(k, n):
    with pytest.raises(UserError):
        resolve_k(k, n)


class Slots:
    """A switchboard with many slots and no model (the random selector reads names only)."""

    slot_names = [f"{t}.{i}" for t in ("spatial", "semantic", "frequency") for i in range(8)]


def test_random_selector_is_reproducible_and_seeded():
    def draw(seed: int, index: int) -> list[str]:
        torch.manual_seed(seed * 7 + index)  # disturb the global RNGs: must not matter
        random.seed(index)
        return RandomSelector(seed).select(None, Slots(), [], per_sample_ce, 1, 6, index).active

    first = [draw(1, i) for i in range(4)]
    assert first == [draw(1, i) for i in range(4)]
    assert first != [draw(2, i) for i in range(4)]
    assert len({tuple(a) for a in first}) > 1  # re-selections differ from each other
    for active in first:
        assert len(active) == 6 and active == sorted(active, key=Slots.slot_names.index)
    selection = RandomSelector(1).select(None, Slots(), [], per_sample_ce, 1, 6, 0)
    assert selection.raw == {} and selection.normalized == {}


@pytest.mark.parametrize("selector", [FisherSelector(), FisherSelector("vmap"), GradNormSelector()])
def test_score_selectors_pick_top_k_of_normalized(selector):
    torch.manual_seed(0)
    model = TinySlotNet()
    selection = selector.select(model, model, [make_data(4, seed=0)], per_sample_ce, 4, 2, 0)
    assert selection.normalized == normalize_per_type(selection.raw)
    assert selection.active == top_k(selection.normalized, 2)
    for slot_type in ("spatial", "semantic", "frequency"):
        total = sum(v for n, v in selection.normalized.items() if n.startswith(slot_type))
        assert total == pytest.approx(1.0)


def test_make_selector():
    assert isinstance(make_selector("fisher", 0), FisherSelector)
    assert make_selector("fisher", 0, method="vmap").method == "vmap"
    assert isinstance(make_selector("gradnorm", 0), GradNormSelector)
    assert make_selector("random", 5) == RandomSelector(5)
    with pytest.raises(UserError, match="unknown selector"):
        make_selector("oracle", 0)
    with pytest.raises(UserError, match="unknown Fisher method"):
        make_selector("fisher", 0, method="magic")
