"""The statistics every benchmark reports: medians (with their spread and a distribution-free interval),
nearest-rank percentiles, and one way to print a number that may be missing."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def spread(xs: list[float]) -> dict[str, float | None]:
    """Median, min and max of ``xs`` (all None if there are none)."""
    return {"median": median(xs), "min": min(xs) if xs else None, "max": max(xs) if xs else None}


def median_of(rows: Iterable[dict[str, Any]], key: str) -> float | None:
    """The median of ``row[key]`` over the rows that have a value for it."""
    return median([r[key] for r in rows if r.get(key) is not None])


def percentile(xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not xs:
        return None
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def median_ci(xs: list[float], conf: float = 0.95) -> tuple[float | None, float | None, float | None]:
    """Distribution-free CI of the median from order statistics (sign test): (low, high, actual coverage).

    The widest interval [x(1), x(n)] is returned when n is too small for the requested coverage.
    """
    n = len(xs)
    if n == 0:
        return None, None, None
    s = sorted(xs)

    def cdf(k: int) -> float:  # P(Binomial(n, 1/2) <= k)
        return float(sum(math.comb(n, i) for i in range(k + 1)) / 2**n)

    k = 1  # 1-based rank of the lower bound
    while k + 1 <= n // 2 and 1 - 2 * cdf(k) >= conf:
        k += 1
    return s[k - 1], s[n - k], 1 - 2 * cdf(k - 1)


def fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)
