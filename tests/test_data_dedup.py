"""Dedup internals against brute force: exact first-occurrence and MinHash near-duplicates."""

import random

import numpy as np

from tuneforge.data.dedup import NearDuplicates, first_occurrence, shingles


def test_first_occurrence_matches_brute_force():
    rng = np.random.default_rng(0)
    h = rng.integers(0, 50, size=500)
    expected = [int(np.flatnonzero(h == v)[0]) for v in h]
    assert first_occurrence(h).tolist() == expected


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def test_near_duplicates_agree_with_true_jaccard(tmp_path):
    rng = random.Random(0)
    base = [" ".join(f"w{rng.randrange(5000)}" for _ in range(40)) for _ in range(200)]
    docs, origin = list(base), list(range(200))
    for i in range(0, 200, 4):  # variants: 1 word appended (J~0.97) or 10 of 40 words replaced (J well below 0.5)
        words = base[i].split()
        docs.append(base[i] + " extra")
        origin.append(i)
        for k in rng.sample(range(40), 10):
            words[k] = f"x{rng.randrange(10**6)}"
        docs.append(" ".join(words))
        origin.append(-1)
    near = NearDuplicates(tmp_path / "sig.bin", threshold=0.85, num_perm=128)
    near.add(docs[:123])
    near.add(docs[123:])
    dup_of, sim = near.resolve(np.ones(len(docs), dtype=bool))
    sets = [set(shingles(d, 3)) for d in docs]
    for i in range(len(docs)):
        true_best = max(_jaccard(sets[i], sets[j]) for j in range(i)) if i else 0.0
        if true_best >= 0.95:
            assert dup_of[i] == origin[i] and sim[i] >= 0.85, i
        if true_best <= 0.6:
            assert dup_of[i] == -1, i
    assert (dup_of[:200] == -1).all()  # originals are kept
    assert (dup_of >= 0).sum() == 50
