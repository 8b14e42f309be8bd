"""Deduplication: exact (normalised content hash) and near-duplicate (MinHash LSH).

Signatures come from datasketch (`MinHash.bulk`, band/row counts from `MinHashLSH` for the
threshold). The LSH index itself is kept as flat numpy arrays instead of datasketch's
in-memory `MinHashLSH`, which stores Python objects per key (~400 bytes per example,
measured: 400 MB per million): here signatures (4 bytes x num_perm per example) and band
hashes (8 bytes x bands) are appended to files on disk and memory-mapped at the end, where
one band at a time is sorted (16 bytes per example of RAM while it runs). Candidates (same band hash) are confirmed by the estimated Jaccard similarity, then
joined into clusters; the first example of a cluster (in file order) is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import zlib

import numpy as np
from datasketch import MinHash, MinHashLSH

from tuneforge.data.hashing import normalise


def first_occurrence(hashes: np.ndarray) -> np.ndarray:
    """For each position, the index of the first position with the same hash (itself if first)."""
    if len(hashes) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(hashes, kind="stable")  # equal hashes stay in input order
    sorted_h = hashes[order]
    starts = np.r_[True, sorted_h[1:] != sorted_h[:-1]]
    group_first = order[np.flatnonzero(starts)][np.cumsum(starts) - 1]  # (N,) first index of each sorted position's group
    out = np.empty_like(order)
    out[order] = group_first
    return out


def shingles(text: str, n: int) -> list[bytes]:
    """Word n-grams of the normalised text (the whole text when it has fewer than n words)."""
    words = normalise(text).split(" ")
    if len(words) <= n:
        return [" ".join(words).encode()]
    return [" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)]


@dataclass
class NearDuplicates:
    """Streaming MinHash LSH: `add` texts in order, then `resolve` once."""

    signature_file: Path
    threshold: float = 0.85
    num_perm: int = 64
    ngram: int = 3
    seed: int = 1

    @property
    def band_file(self) -> Path:
        return self.signature_file.with_suffix(".bands")

    def __post_init__(self) -> None:
        lsh = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)  # only for its optimal (bands, rows)
        self.bands, self.rows = lsh.b, lsh.r
        rng = np.random.default_rng(self.seed)
        self._mult = rng.integers(1, 2**63, size=(self.bands * self.rows,), dtype=np.uint64) | np.uint64(1)
        # Permutations drawn once (MinHash.bulk would redraw them per example); crc32 (C) hashes
        # shingles ~10x faster than datasketch's default SHA-1 wrapper, and is deterministic.
        template = MinHash(num_perm=self.num_perm, seed=self.seed)
        self._minhash_kwargs = {"num_perm": self.num_perm, "seed": self.seed, "permutations": template.permutations,
                                "scheme": template.scheme, "hashfunc": zlib.crc32}
        self._sig_fh = self.signature_file.open("wb")
        self._band_fh = self.band_file.open("wb")
        self.count = 0

    def add(self, texts: list[str]) -> None:
        """Append a batch of texts (one per example, in order)."""
        if not texts:
            return
        sigs = MinHash.bulk([shingles(t, self.ngram) for t in texts], **self._minhash_kwargs)
        sig = np.stack([m.hashvalues for m in sigs]).astype(np.uint32)  # (B, num_perm)
        self._sig_fh.write(sig.tobytes())
        weighted = sig[:, : self.bands * self.rows].astype(np.uint64) * self._mult  # (B, bands*rows), wraps mod 2^64
        bands = weighted.reshape(len(texts), self.bands, self.rows).sum(axis=2)  # (B, bands)
        self._band_fh.write(bands.view(np.int64).tobytes())
        self.count += len(texts)

    def resolve(self, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Among rows where `alive`, find near-duplicates of earlier rows.

        Returns (dup_of, similarity): dup_of[i] is the kept row i duplicates, or -1.
        """
        self._sig_fh.close()
        self._band_fh.close()
        dup_of = np.full(self.count, -1, dtype=np.int64)
        similarity = np.zeros(self.count, dtype=np.float32)
        if self.count == 0:
            return dup_of, similarity
        sig = np.memmap(self.signature_file, dtype=np.uint32, mode="r", shape=(self.count, self.num_perm))
        bands = np.memmap(self.band_file, dtype=np.int64, mode="r", shape=(self.count, self.bands))
        idx = np.flatnonzero(alive)
        pairs = np.concatenate([self._band_pairs(np.asarray(bands[idx, k]), idx) for k in range(self.bands)], axis=1)
        pairs = np.unique(pairs, axis=1) if pairs.size else pairs  # (2, P): (earlier, later)
        sims = np.concatenate([(sig[pairs[0, s]] == sig[pairs[1, s]]).mean(axis=1) for s in _chunks(pairs.shape[1])]) if pairs.size else np.zeros(0)
        keep = sims >= self.threshold
        root = _cluster_roots(pairs[:, keep], self.count)
        later = np.flatnonzero(root != np.arange(self.count))
        dup_of[later] = root[later]
        best = {}
        for (a, b), s in zip(pairs[:, keep].T, sims[keep]):
            best[b] = max(best.get(b, 0.0), s)
        similarity[later] = [best.get(i, self.threshold) for i in later]
        del sig, bands
        return dup_of, similarity

    def remove_files(self) -> None:
        self.signature_file.unlink(missing_ok=True)
        self.band_file.unlink(missing_ok=True)

    @staticmethod
    def _band_pairs(band: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """(2, P) pairs (first row of the bucket, other row) for buckets with several rows."""
        first = first_occurrence(band)  # positions within idx
        others = np.flatnonzero(first != np.arange(len(band)))
        return np.stack([idx[first[others]], idx[others]])


def _chunks(n: int, size: int = 65536) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _cluster_roots(pairs: np.ndarray, n: int) -> np.ndarray:
    """Union-find over confirmed pairs; each row's root is the earliest row of its cluster."""
    parent = np.arange(n)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs.T:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.arange(n)
    involved = np.unique(pairs)
    roots[involved] = [find(int(i)) for i in involved]
    return roots
