"""Study statistics against hand-computed values and published t quantiles."""

from __future__ import annotations

import math

import pytest

from crossearth_gate.study.stats import (
    CONTRADICTED,
    INCONCLUSIVE,
    NOT_RUN,
    SUPPORTED,
    mean_interval,
    paired_difference,
    summarize,
    t975,
    verdict,
)


@pytest.mark.parametrize(("df", "expected"), [
    (1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (30, 2.0423),  # table
    (31, 2.0395), (40, 2.0211), (60, 2.0003), (120, 1.9799), (1000, 1.9623),  # Cornish-Fisher
])
def test_t_quantile_matches_published_values(df: int, expected: float) -> None:
    assert t975(df) == pytest.approx(expected, abs=2e-4)


def test_t_quantile_refuses_zero_degrees_of_freedom() -> None:
    with pytest.raises(ValueError):
        t975(0)


def test_summary_is_mean_and_sample_std() -> None:
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert (s.n, s.mean) == (4, 2.5)
    assert s.std == pytest.approx(math.sqrt(5 / 3))
    assert summarize([7.0]).std is None
    assert summarize([]) == summarize(())


def test_paired_difference_uses_shared_seeds_and_t_interval() -> None:
    a = {0: 40.0, 1: 42.0, 2: 41.0}
    b = {0: 38.0, 1: 41.0, 2: 37.0, 3: 50.0}  # seed 3 has no partner
    p = paired_difference(a, b)
    assert p.seeds == (0, 1, 2) and p.differences == (2.0, 1.0, 4.0)
    assert p.mean == pytest.approx(7 / 3)
    assert p.std == pytest.approx(math.sqrt(7 / 3))  # squared deviations 1/9 + 16/9 + 25/9 over n - 1 = 2
    half = 4.3027 * math.sqrt(7 / 3) / math.sqrt(3)
    assert (p.low, p.high) == (pytest.approx(7 / 3 - half, abs=1e-3), pytest.approx(7 / 3 + half, abs=1e-3))
    assert verdict(p) == INCONCLUSIVE


def test_mean_interval_is_the_t_interval_of_the_mean() -> None:
    low, high = mean_interval(summarize([40.0, 42.0, 41.0, 45.0]))  # mean 42, squared deviations 4 + 0 + 1 + 9 over 3
    half = 3.1824 * math.sqrt(14 / 3) / 2
    assert (low, high) == (pytest.approx(42 - half, abs=1e-3), pytest.approx(42 + half, abs=1e-3))
    assert mean_interval(summarize([40.0])) is None and mean_interval(summarize([])) is None


def test_verdicts() -> None:
    assert verdict(paired_difference({0: 3.0, 1: 3.2, 2: 2.9}, {0: 1.0, 1: 1.1, 2: 1.0})) == SUPPORTED
    assert verdict(paired_difference({0: 1.0, 1: 1.1, 2: 1.0}, {0: 3.0, 1: 3.2, 2: 2.9})) == CONTRADICTED
    one = paired_difference({0: 9.0}, {0: 1.0})
    assert one.mean == 8.0 and one.low is None and verdict(one) == INCONCLUSIVE
    assert verdict(paired_difference({}, {0: 1.0})) == NOT_RUN  # no seed paired: a study in progress
