"""Seeded, resumable batch order, and the packing policy (how micro-batches reach the model).

The order of epoch e is a permutation drawn from (seed, e) alone, so a resumed run that
knows (epoch, micro-batch index) replays exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tuneforge.config import RunConfig
from tuneforge.errors import ConfigError, Problem
from tuneforge.methods.estimate import estimate_for_model
from tuneforge.objectives.base import packing_matches_padding


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def micro_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    order = epoch_order(n, seed, epoch)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def steps_per_epoch(n: int, batch_size: int, grad_accum: int) -> int:
    return math.ceil(math.ceil(n / batch_size) / grad_accum)


def row_chunks(batch: dict[str, torch.Tensor], rows: int | None) -> list[dict[str, torch.Tensor]]:
    """Split a batch along its rows into passes of at most `rows` rows (None: one pass).

    Summed losses make the gradient of the passes add up to the gradient of the whole
    batch, while peak activation memory scales with one pass.
    """
    total = next(iter(batch.values())).shape[0]
    step = rows or total
    return [{k: v[i : i + step] for k, v in batch.items()} for i in range(0, total, step)]


# estimated activations of one forward/backward pass when rows per pass are automatic
CPU_PASS_BYTES = 256 * 2**20


@dataclass(frozen=True)
class BatchLayout:
    """How micro-batches reach the model: packed rows (and how many per forward/backward) or padding."""

    packing: bool
    rows_per_pass: int | None  # None: every packed row of the micro-batch in one pass
    why: str

    def describe(self) -> str:
        if not self.packing:
            return f"padded ({self.why})"
        rows = "all rows" if self.rows_per_pass is None else f"{self.rows_per_pass} row{'s' * (self.rows_per_pass > 1)}"
        return f"packed, {rows} per forward/backward ({self.why})"


def batch_layout(cfg: RunConfig, model, objective, pad_id: int, device: torch.device) -> BatchLayout:
    """Resolve train.packing / train.packed_rows_per_pass (null = automatic) for this model and objective.

    Packing is refused outright when asked for explicitly and impossible; left automatic, it
    falls back to padding and says why. Rows per pass on CPU: as many packed rows as fit
    `CPU_PASS_BYTES` of estimated activations, at least one. For a 25.7M Llama at 512 tokens
    that is one row, measured as fast as all rows at once at under half the peak memory
    (bench/train_throughput.py): a 512-token row already runs the matrix multiplies at full
    speed while smaller activations stay in cache and the allocator reuses them. Small models
    keep all rows in one pass (their per-pass overhead would dominate: one 128-token row per
    pass made the demo's pretraining steps 2x slower). GPUs want the bigger passes.
    """
    train = cfg.train
    if train.packing is False:
        return BatchLayout(False, None, "train.packing: false")
    problem = _packing_problem(model, objective, pad_id)
    if problem:
        headline, cause = problem
        if train.packing:
            raise ConfigError(headline, [Problem("train.packing", cause, "set train.packing: false")])
        return BatchLayout(False, None, f"not packed: {cause}")
    why = "train.packing: true" if train.packing else "packing: the model keeps packed examples apart"
    if train.packed_rows_per_pass or device.type != "cpu":
        return BatchLayout(True, train.packed_rows_per_pass, why)
    per_row = estimate_for_model(
        model, cfg.method, 1, cfg.model.max_length, gradient_checkpointing=train.gradient_checkpointing
    ).memory_bytes["activations"]
    rows = max(1, CPU_PASS_BYTES // max(per_row, 1))
    budget = f"~{per_row / 2**20:.0f} MiB of activations per row, {CPU_PASS_BYTES // 2**20} MiB per pass on CPU"
    return BatchLayout(True, None if rows >= train.batch_size else int(rows), f"{why}; {budget}")


def _packing_problem(model, objective, pad_id: int) -> tuple[str, str] | None:
    """(headline, cause) of why this objective/model pair cannot be packed, or None."""
    if not hasattr(objective, "pack"):
        return (
            f"train.packing is not available for the {objective.name} objective",
            f"{objective.name} batches are not token sequences",
        )
    if not packing_matches_padding(model, pad_id):
        return (
            f"{type(model).__name__} does not keep packed examples apart",
            "its attention mask ignores the position restarts between packed examples",
        )
    return None


def rank_shard(indices: list[int], rank: int, world: int) -> list[int]:
    """Rank `rank`'s share of one micro-batch of `world * train.batch_size` examples: every world-th from its rank on.

    The shards of all ranks are disjoint and together are the micro-batch, so N ranks of batch b see what
    one process of batch N*b sees (one rank: the whole micro-batch).
    """
    return indices[rank::world]
