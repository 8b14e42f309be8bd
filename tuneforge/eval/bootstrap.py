"""Percentile bootstrap confidence intervals over test examples.

Every approach is resampled with the *same* index matrix (same seed, same n), so intervals
of differences between approaches are paired: each resample compares the approaches on the
same questions, which is what makes a small but consistent gain detectable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Interval:
    mean: float
    ci_low: float
    ci_high: float

    def to_dict(self, digits: int = 4) -> dict[str, float]:
        return {k: round(v, digits) for k, v in asdict(self).items()}

    def excludes(self, value: float) -> bool:
        return not (self.ci_low <= value <= self.ci_high)


def resample_indices(n: int, samples: int = 1000, seed: int = 0) -> np.ndarray:
    """(samples, n) indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def statistic_ci(
    n: int, statistic: Callable[[np.ndarray], float], samples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """Interval of any statistic of the examples (macro-F1, BLEU...); statistic(indices) -> float."""
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    point = statistic(np.arange(n))
    boots = np.array([statistic(idx) for idx in resample_indices(n, samples, seed)])
    return Interval(float(point), *_percentiles(boots, confidence))


def mean_ci(values: Sequence[float], samples: int = 1000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """Interval of the mean of per-example values (vectorised)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    boots = x[resample_indices(x.size, samples, seed)].mean(axis=1)  # (samples,)
    return Interval(float(x.mean()), *_percentiles(boots, confidence))


def ratio_ci(
    numerators: Sequence[float],
    denominators: Sequence[float],
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Interval of sum(num)/sum(den) with examples resampled: per-token loss with examples as the unit."""
    num, den = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    if num.size == 0 or den.sum() == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    idx = resample_indices(num.size, samples, seed)
    boots = num[idx].sum(axis=1) / np.maximum(den[idx].sum(axis=1), 1e-12)
    return Interval(float(num.sum() / den.sum()), *_percentiles(boots, confidence))


def paired_difference(
    a: Sequence[float], b: Sequence[float], samples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[Interval, float]:
    """Interval of mean(a - b) over the same examples, and the share of resamples where a > b."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.size == 0:
        return Interval(float("nan"), float("nan"), float("nan")), float("nan")
    boots = d[resample_indices(d.size, samples, seed)].mean(axis=1)
    return Interval(float(d.mean()), *_percentiles(boots, confidence)), float((boots > 0).mean())


def paired_statistic_difference(
    n: int,
    statistic_a: Callable[[np.ndarray], float],
    statistic_b: Callable[[np.ndarray], float],
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[Interval, float]:
    """Like `paired_difference` for corpus statistics (BLEU, macro-F1...): both recomputed on each resample."""
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan")), float("nan")
    every = np.arange(n)
    boots = np.array([statistic_a(idx) - statistic_b(idx) for idx in resample_indices(n, samples, seed)])
    return Interval(float(statistic_a(every) - statistic_b(every)), *_percentiles(boots, confidence)), float(
        (boots > 0).mean()
    )
