"""Drift: are live prompts still like the prompts a model was trained on?

Two views, each a number in [0, 1] that is near 0 without drift:
- embedding: the share of live prompts that are *outliers* against the training prompts
  (MiniLM embedding whose nearest training neighbour is less similar than the 5th
  percentile of training prompts' own leave-one-out nearest neighbours), minus the 5%
  expected by construction;
- length: the Kolmogorov-Smirnov statistic between prompt lengths (in characters).
The score is the larger of the two; `drifted` compares it with the threshold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

OUTLIER_QUANTILE = 0.05
MIN_LIVE = 5


@dataclass
class DriftReport:
    model: str
    reference_prompts: int
    live_prompts: int
    embedding_outlier_rate: float | None
    embedding_score: float | None
    centroid_cosine: float | None
    length_ks: float | None
    reference_mean_length: float
    live_mean_length: float | None
    score: float | None
    threshold: float
    drifted: bool | None
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Largest gap between the two empirical CDFs."""
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def outlier_rate(ref: np.ndarray, live: np.ndarray) -> float:
    """ref (R, D), live (L, D), rows L2-normalised."""
    sims = ref @ ref.T  # (R, R)
    np.fill_diagonal(sims, -np.inf)
    cutoff = np.quantile(sims.max(axis=1), OUTLIER_QUANTILE)
    nearest = (live @ ref.T).max(axis=1)  # (L,)
    return float(np.mean(nearest < cutoff))


def compare(
    model: str, reference: list[str], live: list[str], embed: Callable[[list[str]], np.ndarray], threshold: float
) -> DriftReport:
    ref_len = np.array([len(t) for t in reference], dtype=float)
    base = dict(
        model=model,
        reference_prompts=len(reference),
        live_prompts=len(live),
        threshold=threshold,
        reference_mean_length=float(ref_len.mean()) if len(ref_len) else 0.0,
    )
    if len(reference) < 2 or len(live) < MIN_LIVE:
        return DriftReport(
            **base,
            embedding_outlier_rate=None,
            embedding_score=None,
            centroid_cosine=None,
            length_ks=None,
            live_mean_length=None,
            score=None,
            drifted=None,
            note=f"needs at least {MIN_LIVE} live prompts and 2 training prompts",
        )
    vectors = embed(reference + live)  # (R + L, 384), normalised
    ref, cur = vectors[: len(reference)], vectors[len(reference) :]
    rate = outlier_rate(ref, cur)
    emb_score = max(0.0, rate - OUTLIER_QUANTILE)
    c_ref, c_cur = ref.mean(0), cur.mean(0)
    centroid = float(c_ref @ c_cur / (np.linalg.norm(c_ref) * np.linalg.norm(c_cur)))
    live_len = np.array([len(t) for t in live], dtype=float)
    ks = ks_statistic(ref_len, live_len)
    score = max(emb_score, ks)
    return DriftReport(
        **base,
        embedding_outlier_rate=rate,
        embedding_score=emb_score,
        centroid_cosine=centroid,
        length_ks=ks,
        live_mean_length=float(live_len.mean()),
        score=score,
        drifted=score > threshold,
    )
