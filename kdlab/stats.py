"""Paired gains over a reference with a Student-t confidence interval, and a verdict per claim.

Runs of one seed share their data stream (`kdlab.engine.train_cohort`), so a method's gain is
analysed as paired differences: method seed s minus reference seed s, over the seeds where both
finished cleanly. The interval is mean ± t_{0.975, n−1} · sd / √n (sd with n − 1 in the
denominator); one pair gives a mean but no interval (NaN bounds), no pair gives NaN everywhere.
Math only: the runs are read by `kdlab.pipeline` and `kdlab.claims`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


SUPPORTED, CONTRADICTED, INCONCLUSIVE, DIVERGED = "supported", "contradicted", "inconclusive", "diverged"
DIRECTIONS = {"greater": 1, "less": -1}  # the paper's claim: method above (below) the reference


def is_finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def t_quantile(probability: float, dof: int) -> float:
    """The ``probability`` quantile of Student's t with ``dof`` degrees of freedom."""
    if dof < 1:
        raise ValueError(f"dof must be at least 1, got {dof}")
    from scipy.stats import t as student_t  # scipy comes with scikit-image; 1.4 s to import, so only here

    return float(student_t.ppf(probability, dof))


@dataclass(frozen=True)
class MeanCI:
    """Mean of ``n`` values with its two-sided ``level`` Student-t interval [low, high]."""

    mean: float
    low: float
    high: float
    n: int
    std: float


def mean_ci(values: Sequence[float], level: float = 0.95) -> MeanCI:
    """Mean and two-sided Student-t interval (n − 1 degrees of freedom) of finite ``values``."""
    values = [float(v) for v in values]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"values must be finite, got {values}")
    n = len(values)
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0, math.nan)
    mean = statistics.fmean(values)
    if n == 1:
        return MeanCI(mean, math.nan, math.nan, 1, math.nan)
    std = statistics.stdev(values)
    half = t_quantile(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    return MeanCI(mean, mean - half, mean + half, n, std)


@dataclass(frozen=True)
class PairedDelta:
    """Paired differences method − reference over common clean seeds."""

    ci: MeanCI
    seeds: tuple[int, ...]  # the seeds paired
    dropped: int  # common seeds left out because one side diverged or collapsed (or lacks the metric)

    @property
    def mean(self) -> float:
        return self.ci.mean


def paired_delta(method: Mapping[int, float | None], reference: Mapping[int, float | None],
                 level: float = 0.95) -> PairedDelta:
    """``method`` and ``reference`` map seed → score of a clean run, or None / NaN for a run that
    diverged or collapsed (or is not measured); seeds on one side only are not pairs, and common
    seeds with a non-finite side are dropped (counted)."""
    common = sorted(set(method) & set(reference))
    seeds = tuple(s for s in common if is_finite(method[s]) and is_finite(reference[s]))
    ci = mean_ci([method[s] - reference[s] for s in seeds], level)
    return PairedDelta(ci, seeds, len(common) - len(seeds))


def verdict(delta: PairedDelta | MeanCI, direction: str = "greater") -> str:
    """``supported`` when the interval excludes 0 on the side of ``direction`` (greater: the method
    above the reference), ``contradicted`` when it excludes 0 on the other side, ``inconclusive``
    when it contains 0 or does not exist (fewer than two pairs)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {sorted(DIRECTIONS)}, got {direction!r}")
    ci = delta.ci if isinstance(delta, PairedDelta) else delta
    sign = DIRECTIONS[direction]
    if not (math.isfinite(ci.low) and math.isfinite(ci.high)):
        return INCONCLUSIVE
    if sign * ci.low > 0 and sign * ci.high > 0:
        return SUPPORTED
    if sign * ci.low < 0 and sign * ci.high < 0:
        return CONTRADICTED
    return INCONCLUSIVE
