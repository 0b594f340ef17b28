"""Statistics over seeds: means, sample standard deviations, paired differences, t intervals, verdicts.

Plain functions on numbers (no torch, no numpy). Intervals are two-sided 95 % Student t intervals of
the mean paired difference (df = n - 1): exact table values for df 1..30, the Cornish-Fisher
expansion beyond (error below 1e-4 there).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# 97.5 % quantiles of Student's t for df = 1..30
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)
_Z975 = 1.959964

SUPPORTED = "supported"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive at this sample size"
NOT_RUN = "not run yet"


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (two-sided 95 % intervals)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    x = _Z975  # Abramowitz & Stegun 26.7.5
    g1 = (x**3 + x) / 4
    g2 = (5 * x**5 + 16 * x**3 + 3 * x) / 96
    g3 = (3 * x**7 + 19 * x**5 + 17 * x**3 - 15 * x) / 384
    g4 = (79 * x**9 + 776 * x**7 + 1482 * x**5 - 1920 * x**3 - 945 * x) / 92160
    return x + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (n - 1); std is None for fewer than two values."""

    n: int
    mean: float | None
    std: float | None


def summarize(values: Iterable[float]) -> Summary:
    values = list(values)
    if not values:
        return Summary(0, None, None)
    std = statistics.stdev(values) if len(values) > 1 else None
    return Summary(len(values), statistics.fmean(values), std)


def mean_interval(summary: Summary) -> tuple[float, float] | None:
    """The 95 % Student t interval of the mean the summary describes; None for fewer than two values."""
    if summary.std is None or summary.mean is None:
        return None
    half = t975(summary.n - 1) * summary.std / math.sqrt(summary.n)
    return summary.mean - half, summary.mean + half


@dataclass(frozen=True)
class Paired:
    """Differences a - b over the seeds both have; the interval is None below two pairs."""

    seeds: tuple[int, ...]
    differences: tuple[float, ...]
    mean: float | None
    std: float | None
    low: float | None
    high: float | None

    @property
    def n(self) -> int:
        return len(self.seeds)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> Paired:
    """Mean of a[seed] - b[seed] over shared seeds with its 95 % t interval."""
    seeds = tuple(sorted(set(a) & set(b)))
    diffs = tuple(a[s] - b[s] for s in seeds)
    summary = summarize(diffs)
    interval = mean_interval(summary)
    if interval is None:
        return Paired(seeds, diffs, summary.mean, None, None, None)
    return Paired(seeds, diffs, summary.mean, summary.std, *interval)


def verdict(paired: Paired) -> str:
    """Supported if the whole interval is above zero, contradicted if below, otherwise inconclusive.

    A claim with no paired seed says so rather than "inconclusive": a study in progress has not tested it.
    """
    if paired.n == 0:
        return NOT_RUN
    if paired.low is None or paired.high is None:
        return INCONCLUSIVE
    if paired.low > 0:
        return SUPPORTED
    if paired.high < 0:
        return CONTRADICTED
    return INCONCLUSIVE
