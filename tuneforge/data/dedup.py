"""Deduplication: exact (normalised content hash) and near-duplicate (MinHash LSH).

Signatures come from datasketch (`MinHash.bulk`, band/row counts from `MinHashLSH` for the
threshold). The LSH index itself is kept as flat numpy arrays instead of datasketch's
in-memory `MinHashLSH`, which stores Python objects per key (~400 bytes per example,
measured: 400 MB per million): here signatures (4 bytes x num_perm per example) and band
hashes (8 bytes per band) are appended to files on disk; at the end one band at a time is
read and sorted (16 bytes per example of RAM while it runs, plus 8 bytes per
candidate pair: templated data where most examples collide costs up to 8 x bands per example).

Candidates (same band hash) are confirmed by the estimated Jaccard similarity; each
example points at its earliest confirmed match, chains are followed back to an example
that matches nothing earlier, and that one (the first in file order) is kept.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

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
    group_first = order[np.flatnonzero(starts)][
        np.cumsum(starts) - 1
    ]  # (N,) first index of each sorted position's group
    out = np.empty_like(order)
    out[order] = group_first
    return out


def shingles(text: str, n: int) -> list[bytes]:
    """Word n-grams of the normalised text (the whole text when it has fewer than n words)."""
    words = normalise(text).split(" ")
    if len(words) <= n:
        return [" ".join(words).encode()]
    return [" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)]


@dataclass
class NearDuplicates:
    """Streaming MinHash LSH: `add` texts in order, then `resolve` once."""

    signature_file: Path
    threshold: float = 0.85
    num_perm: int = 64
    ngram: int = 3
    seed: int = 1

    def band_file(self, k: int) -> Path:
        return self.signature_file.with_suffix(f".band{k}")

    def __post_init__(self) -> None:
        lsh = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)  # only for its optimal (bands, rows)
        self.bands, self.rows = lsh.b, lsh.r
        rng = np.random.default_rng(self.seed)
        self._mult = rng.integers(1, 2**63, size=(self.bands * self.rows,), dtype=np.uint64) | np.uint64(1)
        # Permutations drawn once (MinHash.bulk would redraw them per example); crc32 (C) hashes
        # shingles ~10x faster than datasketch's default SHA-1 wrapper, and is deterministic.
        template = MinHash(num_perm=self.num_perm, seed=self.seed)
        self._minhash_kwargs = {
            "num_perm": self.num_perm,
            "seed": self.seed,
            "permutations": template.permutations,
            "scheme": template.scheme,
            "hashfunc": zlib.crc32,
        }
        self._sig_fh = self.signature_file.open("wb")
        self._band_fhs = [
            self.band_file(k).open("wb") for k in range(self.bands)
        ]  # one file per band: read back contiguously
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
        for k, fh in enumerate(self._band_fhs):
            fh.write(np.ascontiguousarray(bands[:, k]).view(np.int64).tobytes())
        self.count += len(texts)

    def resolve(self, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Among rows where `alive`, find near-duplicates of earlier rows.

        Returns (dup_of, similarity): dup_of[i] is the kept row that row i duplicates (or -1),
        similarity[i] the estimated Jaccard similarity between the two.
        """
        for fh in (self._sig_fh, *self._band_fhs):
            fh.close()
        n = self.count
        dup_of = np.full(n, -1, dtype=np.int64)
        similarity = np.zeros(n, dtype=np.float32)
        if n == 0:
            return dup_of, similarity
        idx = np.flatnonzero(alive)
        keys = np.unique(
            np.concatenate(
                [_band_pairs(np.fromfile(self.band_file(k), dtype=np.int64)[idx], idx, n) for k in range(self.bands)]
            )
        )  # (P,)
        earlier, later = keys % n, keys // n
        confirmed = self._similarities(earlier, later) >= self.threshold
        parent = np.arange(n)
        np.minimum.at(parent, later[confirmed], earlier[confirmed])  # each row -> its earliest confirmed match
        while not np.array_equal(parent[parent], parent):  # follow chains back to a row that matches nothing earlier
            parent = parent[parent]
        removed = np.flatnonzero(parent != np.arange(n))
        dup_of[removed] = parent[removed]
        similarity[removed] = self._similarities(parent[removed], removed)
        return dup_of, similarity

    def _similarities(self, a: np.ndarray, b: np.ndarray, chunk: int = 8192) -> np.ndarray:
        """Estimated Jaccard similarity of rows a[i] and b[i]: the share of equal MinHash values.

        Rows are read with pread, chunk by chunk: memory-mapping the file instead would put
        most of it in the process's resident set (the kernel maps 64 KB around each fault).
        """
        out = np.empty(len(a), dtype=np.float32)
        row_bytes = 4 * self.num_perm
        with self.signature_file.open("rb") as fh:
            fd = fh.fileno()
            for i in range(0, len(a), chunk):
                rows, inverse = np.unique(np.concatenate([a[i : i + chunk], b[i : i + chunk]]), return_inverse=True)
                block = np.frombuffer(
                    b"".join(os.pread(fd, row_bytes, int(r) * row_bytes) for r in rows), dtype=np.uint32
                )
                block = block.reshape(len(rows), self.num_perm)  # (U, num_perm)
                half = len(inverse) // 2
                equal = (block[inverse[:half]] == block[inverse[half:]]).sum(axis=1, dtype=np.int32)  # (chunk,)
                out[i : i + chunk] = equal / self.num_perm
        return out

    def remove_files(self) -> None:
        for path in (self.signature_file, *(self.band_file(k) for k in range(self.bands))):
            path.unlink(missing_ok=True)


def _band_pairs(band: np.ndarray, idx: np.ndarray, n: int) -> np.ndarray:
    """Candidate pairs of one band, (first row of the bucket, other row), encoded as later * n + earlier."""
    first = first_occurrence(band)  # (len(idx),) positions within idx
    others = np.flatnonzero(first != np.arange(len(band)))
    return idx[others] * n + idx[first[others]]
