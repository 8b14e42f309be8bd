"""Examples against the run's `model.max_length`: what is over it, what happens to it, and the epochs rule.

`data.overlength` says what training does with an example longer than model.max_length tokens:
  truncate (default): cut at max_length, and said loudly - count, share and the first file:line;
  drop: left out of training, each listed (file:line, tokens) in the manifest's data_stats.overlength;
  error: the run is refused before any heavy work, with the file:line of every such example.
`data validate --config/--max-length` and `data report` count the same examples before a run.

Default epochs (`train.epochs: auto`), OpenAI's rule: 3 passes, more for a small file and fewer for a large one,
so that examples x epochs stays within 100..25,000 (and epochs within 1..25).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tuneforge.errors import DataError, Problem

OVERLENGTH = ("truncate", "drop", "error")
DEFAULT_EPOCHS, MIN_EPOCHS, MAX_EPOCHS = 3, 1, 25
MIN_TARGET_EXAMPLES, MAX_TARGET_EXAMPLES = 100, 25_000
LISTED = 20  # places listed by an error (all are counted)
log = logging.getLogger("tuneforge")


def default_epochs(n_examples: int) -> int:
    """OpenAI's default n_epochs: 3, raised so that n x epochs >= 100, lowered so that n x epochs <= 25,000."""
    n = max(1, n_examples)
    if n * DEFAULT_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_EPOCHS, math.ceil(MIN_TARGET_EXAMPLES / n))
    if n * DEFAULT_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_EPOCHS, MAX_TARGET_EXAMPLES // n)
    return DEFAULT_EPOCHS


def resolve_epochs(epochs: float | str, n_examples: int) -> float:
    return float(default_epochs(n_examples)) if epochs == "auto" else float(epochs)


def where_of(example: Any, index: int) -> str:
    source = getattr(example, "source", "")
    if source:
        return source
    line = getattr(example, "metadata", {}).get("source_line")
    return f"record at line {line}" if line is not None else f"example {index}"


@dataclass
class OverLength:
    """The examples of one split over the limit."""

    limit: int
    examples: int
    places: list[str] = field(default_factory=list)  # file:line of each, in order
    tokens: list[int] = field(default_factory=list)  # their full lengths (when known)

    @property
    def count(self) -> int:
        return len(self.places)

    @property
    def share(self) -> float:
        return self.count / max(1, self.examples)

    def line(self, what: str = "example(s)") -> str:
        first = f", first at {', '.join(self.places[:3])}" if self.places else ""
        return (
            f"{self.count:,} of {self.examples:,} {what} ({self.share:.1%}) are longer than "
            f"model.max_length={self.limit} tokens{first}"
        )

    def to_dict(self, policy: str) -> dict[str, Any]:
        return {
            "policy": policy,
            "limit": self.limit,
            "count": self.count,
            "share": round(self.share, 4),
            "first": self.places[:5],
        }


def enforce(
    examples: Sequence[Any], feats: list, max_length: int, policy: str, split: str = "train"
) -> tuple[list, OverLength]:
    """Apply data.overlength to encoded `feats` (their `truncated` flags); returns the features kept and the count.

    Features that do not line up one to one with `examples` (objectives that already left some out) are
    counted without places."""
    if policy not in OVERLENGTH:
        raise ValueError(f"overlength must be one of {OVERLENGTH}, not {policy!r}")
    aligned = len(feats) == len(examples)
    over = OverLength(max_length, len(feats))
    for i, f in enumerate(feats):
        if getattr(f, "truncated", False):
            over.places.append(where_of(examples[i], i) if aligned else f"{split} feature {i}")
    if not over.count:
        return feats, over
    fix = "raise model.max_length, shorten or split these examples, or set data.overlength: truncate or drop"
    if policy == "error":
        raise DataError(
            f"data.overlength: error - {over.line()} ({split})",
            [Problem(p, f"longer than model.max_length={max_length} tokens", fix) for p in over.places[:LISTED]],
        )
    if policy == "truncate":
        log.warning(
            "%s split: %s; they are truncated (data.overlength: truncate); set data.overlength: drop or error, "
            "or raise model.max_length",
            split,
            over.line(),
        )
        return feats, over
    kept = [f for f in feats if not getattr(f, "truncated", False)]
    log.warning("%s split: %s; dropped (data.overlength: drop)", split, over.line())
    if not kept:
        raise DataError(
            f"data.overlength: drop left no {split} example",
            [Problem(over.places[0], f"every example is longer than model.max_length={max_length} tokens", fix)],
        )
    return kept, over
