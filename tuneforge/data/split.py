"""Train / validation / test assignment: seeded, by ratio, stratified by label or by group.

Works on small integer arrays (one entry per kept example), so it runs after a streaming
pass without holding the examples.
"""

from __future__ import annotations

import numpy as np

SPLITS = ("train", "validation", "test")


def _counts(n: int, ratios: tuple[float, float, float]) -> tuple[int, int, int]:
    """Validation and test sizes rounded, at least 1 each when their ratio > 0 and n allows."""
    val = int(round(n * ratios[1]))
    test = int(round(n * ratios[2]))
    if n >= 3:
        val = max(val, 1) if ratios[1] > 0 else 0
        test = max(test, 1) if ratios[2] > 0 else 0
    val, test = min(val, n), min(test, max(0, n - val))
    return n - val - test, val, test


def assign(
    n: int,
    ratios: tuple[float, float, float],
    seed: int,
    strata: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """(n,) split ids 0/1/2. `strata`: label id per example (each label split by ratio);
    `groups`: group id per example (a group never spans two splits)."""
    rng = np.random.default_rng(seed)
    out = np.zeros(n, dtype=np.int8)
    if groups is not None:
        return _assign_groups(groups, ratios, rng)
    for members in [np.arange(n)] if strata is None else [np.flatnonzero(strata == s) for s in np.unique(strata)]:
        members = rng.permutation(members)
        _, val, test = _counts(len(members), ratios)
        out[members[:test]] = 2
        out[members[test : test + val]] = 1
    return out


def _assign_groups(groups: np.ndarray, ratios: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    """Shuffle groups, then fill test, validation and train up to their share of examples."""
    ids, sizes = np.unique(groups, return_counts=True)
    order = rng.permutation(len(ids))
    targets = np.array([ratios[2], ratios[1]]) * len(groups)
    split_of_group = np.zeros(len(ids), dtype=np.int8)
    filled = np.zeros(2)
    for g in order:
        for k, split in ((0, 2), (1, 1)):  # test first, then validation
            if filled[k] + sizes[g] / 2 <= targets[k]:
                split_of_group[g] = split
                filled[k] += sizes[g]
                break
    return split_of_group[np.searchsorted(ids, groups)]
