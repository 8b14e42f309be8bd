"""Graders: per-example checks of a model's answer against the test example, in the spirit of OpenAI's.

    grader = build_grader(spec, "eval.graders[0]")       # spec: one entry of eval.graders (spec.py)
    grader.grade(Sample("It costs $49."), {"fact": "$49"})  # -> 1.0 (may raise)
    grader.grade_batch(samples, items)                    # -> GradeBatch(scores, errors); never raises

Types: string_check, regex, json_match, text_similarity, python, score_model (a judge on an
OpenAI-compatible endpoint) and multi (a formula over sub-graders). `tuneforge eval` reports
each grader's mean with its bootstrap interval beside the task metrics; reinforcement
fine-tuning uses the same `grade_batch` as its reward.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tuneforge.errors import ConfigError, Problem
from tuneforge.eval.graders.checks import build_grader
from tuneforge.eval.graders.core import GradeBatch, Grader, GraderMetric, Item, Sample, grade_each, grade_safely
from tuneforge.eval.graders.templates import references

__all__ = [
    "GradeBatch",
    "Grader",
    "GraderMetric",
    "Item",
    "Sample",
    "build_grader",
    "build_graders",
    "grade_each",
    "grade_safely",
    "item_of",
    "check_item_fields",
    "metric_of",
]


def build_graders(specs: Sequence[Any]) -> list[Grader]:
    return [build_grader(s, f"eval.graders[{i}]") for i, s in enumerate(specs)]


def metric_of(spec: Any) -> GraderMetric:
    return GraderMetric(spec.name, spec.metric_family, spec.type)


def item_of(reference: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """A test example as graders see it: its fields (metadata and extra top-level keys) and `reference`,
    the expected answer (a field of the example named `reference` wins)."""
    return {"reference": reference, **fields}


def _templates(spec: Any, where: str) -> Iterable[tuple[str, str]]:
    for key in ("input", "reference"):
        value = getattr(spec, key, None)
        if isinstance(value, str):
            yield f"{where}.{key}", value
        elif isinstance(value, list):  # score_model's messages
            for j, message in enumerate(value):
                yield f"{where}.{key}[{j}].content", message.content
    for name, sub in (getattr(spec, "graders", None) or {}).items():
        yield from _templates(sub, f"{where}.graders.{name}")


def check_item_fields(specs: Sequence[Any], items: Sequence[Item], source: str) -> None:
    """Refuse, before any model loads, a template reading an item field that no test example has
    (a typo, or data without the field); a field only some examples lack is an error on those items."""
    present = {k for item in items for k in item}
    problems = []
    for i, spec in enumerate(specs):
        for key, template in _templates(spec, f"eval.graders[{i}]"):
            for path in references(template):
                field = path.split(".")[1] if path.startswith("item.") else None
                if field and field not in present:
                    problems.append(
                        Problem(
                            key,
                            f"{{{{{path}}}}}: no test example in {source} has the field '{field}'",
                            f"use one of {', '.join(sorted(present)) or '(none)'} or add the field to the data",
                        )
                    )
    if problems:
        raise ConfigError("grader templates read fields the test data does not have", problems)
