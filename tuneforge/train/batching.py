"""Seeded, resumable batch order.

The order of epoch e is a permutation drawn from (seed, e) alone, so a resumed run that
knows (epoch, micro-batch index) replays exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import math

import torch


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def micro_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    order = epoch_order(n, seed, epoch)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def steps_per_epoch(n: int, batch_size: int, grad_accum: int) -> int:
    return math.ceil(math.ceil(n / batch_size) / grad_accum)


def row_chunks(batch: dict[str, torch.Tensor], rows: int | None) -> list[dict[str, torch.Tensor]]:
    """Split a batch along its rows into passes of at most `rows` rows (None: one pass).

    Summed losses make the gradient of the passes add up to the gradient of the whole
    batch, while peak activation memory scales with one pass.
    """
    total = next(iter(batch.values())).shape[0]
    step = rows or total
    return [{k: v[i:i + step] for k, v in batch.items()} for i in range(0, total, step)]
