"""Two nights' failure counts compared: which keys appeared, grew, shrank or vanished, and which of
those changes are noise.

A key's rate on a night is its verified failures per row probed that night. Two rates are
compared with a two-proportion test: Fisher's exact test when the 2x2 table has an expected cell
below 5 (a rare key: the normal approximation is poor there), else the z-test on the pooled
proportion with Yates' continuity correction. Both are two-sided. The z value (with the
correction, signed: positive when the rate grew) is reported either way, as a size of the change.

Many keys are compared at once, so some would pass p < 0.05 by chance alone: the p values of one
comparison are adjusted by the Benjamini-Hochberg procedure (``q``, the false discovery rate),
and a change is marked significant only when ``q`` is below 0.05 (``*``; ``**`` below 0.01). Any
other change is called noise. Standard library only (``math``): no SciPy on the Airflow worker.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

SIGNIFICANT_Q = 0.05
VERY_SIGNIFICANT_Q = 0.01
MIN_EXPECTED = 5  # below this expected count in any cell, Fisher's exact test instead of the z-test

Change = Literal["appeared", "vanished", "grew", "shrank", "same"]


@dataclass(frozen=True)
class TwoProportions:
    """``x1`` of ``n1`` against ``x2`` of ``n2``: the z value (continuity-corrected) and a two-sided p."""

    x1: int
    n1: int
    x2: int
    n2: int
    z: float
    p: float
    test: Literal["fisher", "z"]

    @property
    def rate1(self) -> float:
        return self.x1 / self.n1 if self.n1 else 0.0

    @property
    def rate2(self) -> float:
        return self.x2 / self.n2 if self.n2 else 0.0


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_exact(x1: int, n1: int, x2: int, n2: int) -> float:
    """Two-sided p of Fisher's exact test on the table ``[[x1, n1 - x1], [x2, n2 - x2]]``.

    The sum of the hypergeometric probabilities of every table with the same margins that is no
    more likely than the observed one (the usual two-sided definition, as R's ``fisher.test``).
    """
    _check(x1, n1, x2, n2)
    total, failures = n1 + n2, x1 + x2
    lo, hi = max(0, n1 - (total - failures)), min(failures, n1)
    denominator = _log_comb(total, n1)

    def log_p(k: int) -> float:
        return _log_comb(failures, k) + _log_comb(total - failures, n1 - k) - denominator

    observed = log_p(x1)
    # relative tolerance: tables exactly as likely as the observed one count (floating-point ties)
    limit = observed + 1e-7
    p = sum(math.exp(lp) for k in range(lo, hi + 1) if (lp := log_p(k)) <= limit)
    return min(1.0, p)


def z_corrected(x1: int, n1: int, x2: int, n2: int) -> float:
    """The pooled two-proportion z value with Yates' continuity correction, positive when ``x2/n2`` is larger."""
    _check(x1, n1, x2, n2)
    p1, p2 = x1 / n1, x2 / n2
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0
    diff = max(0.0, abs(p2 - p1) - 0.5 * (1 / n1 + 1 / n2))
    return math.copysign(diff / se, p2 - p1) if diff else 0.0


def two_proportions(x1: int, n1: int, x2: int, n2: int) -> TwoProportions:
    """Compare ``x1/n1`` with ``x2/n2`` (see the module docstring for which test gives ``p``)."""
    _check(x1, n1, x2, n2)
    z = z_corrected(x1, n1, x2, n2)
    pooled = (x1 + x2) / (n1 + n2)
    expected = min(n * share for n in (n1, n2) for share in (pooled, 1 - pooled))
    if expected < MIN_EXPECTED:
        return TwoProportions(x1, n1, x2, n2, z, fisher_exact(x1, n1, x2, n2), "fisher")
    return TwoProportions(x1, n1, x2, n2, z, min(1.0, math.erfc(abs(z) / math.sqrt(2))), "z")


def _check(x1: int, n1: int, x2: int, n2: int) -> None:
    if n1 <= 0 or n2 <= 0 or not (0 <= x1 <= n1) or not (0 <= x2 <= n2):
        raise ValueError(f"counts out of range: {x1} of {n1} against {x2} of {n2}")


def benjamini_hochberg(ps: list[float]) -> list[float]:
    """The Benjamini-Hochberg adjusted p values (q), in the order given."""
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    qs = [1.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, ps[i] * m / rank)
        qs[i] = running
    return qs


@dataclass(frozen=True)
class KeyChange:
    """One key (or category) from night A to night B."""

    key: str
    change: Change
    test: TwoProportions
    q: float

    @property
    def mark(self) -> str:
        """``**`` (q < 0.01), ``*`` (q < 0.05), or ``""``: noise."""
        return "**" if self.q < VERY_SIGNIFICANT_Q else "*" if self.q < SIGNIFICANT_Q else ""

    @property
    def significant(self) -> bool:
        return self.q < SIGNIFICANT_Q

    @property
    def verdict(self) -> str:
        return "significant" if self.significant else "noise"


def _change(x1: int, n1: int, x2: int, n2: int) -> Change:
    if x1 == 0 and x2 > 0:
        return "appeared"
    if x1 > 0 and x2 == 0:
        return "vanished"
    r1, r2 = x1 * n2, x2 * n1  # the rates compared without rounding
    return "grew" if r2 > r1 else "shrank" if r2 < r1 else "same"


def compare_counts(a: Mapping[str, int], rows_a: int, b: Mapping[str, int], rows_b: int) -> list[KeyChange]:
    """Every key of either night, as :class:`KeyChange`; the most significant first, then by the size of z.

    ``a``/``b``: failures per key; ``rows_a``/``rows_b``: rows probed that night (the denominator).
    """
    if rows_a <= 0 or rows_b <= 0:
        raise ValueError(f"a night with no rows probed cannot be compared (rows {rows_a} and {rows_b})")
    keys = sorted(set(a) | set(b))
    tests = [two_proportions(int(a.get(k, 0)), rows_a, int(b.get(k, 0)), rows_b) for k in keys]
    qs = benjamini_hochberg([t.p for t in tests])
    out = [KeyChange(k, _change(t.x1, t.n1, t.x2, t.n2), t, q) for k, t, q in zip(keys, tests, qs)]
    return sorted(out, key=lambda c: (c.q, -abs(c.test.z), c.key))
