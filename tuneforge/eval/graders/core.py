"""What every grader is: `grade(sample, item) -> float`, and a batch form that never raises.

`grade` may raise (a user's python grader, a judge that is down); `grade_batch` turns each
failure into a score of 0 with its error kept, so one bad item never stops an evaluation or a
training step. Reinforcement fine-tuning calls `grade_batch` on a group of sampled answers.
"""

from __future__ import annotations

import json
import math
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

Item = Mapping[str, Any]  # the test example: its fields (metadata, extra top-level keys) and `reference`


@dataclass(frozen=True)
class Sample:
    """One model answer, as OpenAI's graders see it."""

    output_text: str

    @cached_property
    def output_json(self) -> Any:
        """The answer parsed as JSON; None when it is not JSON."""
        try:
            return json.loads(self.output_text.strip())
        except ValueError:
            return None

    def as_dict(self) -> dict[str, Any]:
        return {"output_text": self.output_text, "output_json": self.output_json}


def scope(sample: Sample, item: Item) -> dict[str, Any]:
    """What templates read: {{sample.output_text}}, {{item.fact}}..."""
    return {"sample": sample.as_dict(), "item": item}


@dataclass
class GradeBatch:
    scores: list[float]
    errors: list[str | None] = field(default_factory=list)  # None where the item was graded

    @property
    def error_count(self) -> int:
        return sum(e is not None for e in self.errors)


class Grader(Protocol):
    name: str
    family: str  # "facts" | "style": the verdict ranks approaches per family

    def grade(self, sample: Sample, item: Item) -> float: ...

    def grade_batch(self, samples: Sequence[Sample], items: Sequence[Item]) -> GradeBatch: ...


def describe(exc: BaseException, code_file: str | None = None) -> str:
    """An error as one line; with the line of the user's grader code (`code_file`) it came from."""
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if code_file and f.filename == code_file]
    return f"{type(exc).__name__}: {exc}" + (f" (line {lines[-1]})" if lines else "")


def grade_safely(grader: Grader, sample: Sample, item: Item) -> tuple[float, str | None]:
    """grader.grade, with any failure (or a non-finite score) scored 0 and described."""
    try:
        score = float(grader.grade(sample, item))
    except Exception as exc:  # a grader is user code or a remote judge: any failure is that item's error
        return 0.0, describe(exc, getattr(grader, "code_file", None))
    if not math.isfinite(score):
        return 0.0, f"ValueError: {grader.name} returned {score}, not a finite number"
    return score, None


def grade_each(grader: Grader, samples: Sequence[Sample], items: Sequence[Item]) -> GradeBatch:
    """The batch form for graders that are cheap per item: one after another."""
    pairs = [grade_safely(grader, s, i) for s, i in zip(samples, items)]
    return GradeBatch([p[0] for p in pairs], [p[1] for p in pairs])


@dataclass(frozen=True)
class GraderMetric:
    """A grader as a column beside the task metrics: its per-example scores are computed once per
    approach (a judge is called once per answer) and stored on the result (`ApproachResult.scores`)."""

    name: str
    family: str
    type: str
    kind: str = "graded"
    higher_is_better: bool = True
    scale: float = 1.0
