"""The graders that need no model: string_check, regex, json_match, text_similarity, python, multi."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tuneforge.errors import ConfigError, Problem
from tuneforge.eval.graders import spec
from tuneforge.eval.graders.core import GradeBatch, Grader, Item, Sample, grade_each, scope
from tuneforge.eval.graders.formula import evaluate, parse_formula
from tuneforge.eval.graders.templates import lookup, render, resolve
from tuneforge.eval.metrics import exact_match, token_f1


class _Check:
    """Shared by the graders built from a spec: name, family, and the one-by-one batch."""

    def __init__(self, cfg) -> None:
        self.cfg, self.name, self.family = cfg, cfg.name, cfg.metric_family

    def grade_batch(self, samples: Sequence[Sample], items: Sequence[Item]) -> GradeBatch:
        return grade_each(self, samples, items)


_OPERATIONS: dict[str, Callable[[str, str], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "like": lambda a, b: b in a,
    "ilike": lambda a, b: b.lower() in a.lower(),
    "not_like": lambda a, b: b not in a,
    "not_ilike": lambda a, b: b.lower() not in a.lower(),
}


class StringCheck(_Check):
    def grade(self, sample: Sample, item: Item) -> float:
        where = scope(sample, item)
        return float(_OPERATIONS[self.cfg.operation](render(self.cfg.input, where), render(self.cfg.reference, where)))


class Regex(_Check):
    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.pattern = re.compile(cfg.pattern, re.IGNORECASE if cfg.ignore_case else 0)

    def grade(self, sample: Sample, item: Item) -> float:
        return float(self.pattern.search(render(self.cfg.input, scope(sample, item))) is not None)


class JsonMatch(_Check):
    """1/0 for equal JSON, or the share of `fields` equal. An answer that is not JSON scores 0 (not an
    error: the model failed); a reference that is not JSON is an error (the data is wrong)."""

    def grade(self, sample: Sample, item: Item) -> float:
        where = scope(sample, item)
        expected = _parsed(resolve(self.cfg.reference, where))
        if expected is _INVALID:
            raise ValueError(f"the reference {self.cfg.reference} is not JSON")
        got = _parsed(resolve(self.cfg.input, where))
        if got is _INVALID or got is None:
            return 0.0
        if not self.cfg.fields:
            return float(got == expected)
        hits = [_field(got, path) == lookup(path, expected) for path in self.cfg.fields]
        return sum(hits) / len(hits)


_INVALID = object()


def _parsed(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return _INVALID


def _field(value: Any, path: str) -> Any:
    try:
        return lookup(path, value)
    except KeyError:
        return _INVALID  # the answer lacks the field: never equal


_ROUGE: dict[str, Any] = {}


def _rouge(kind: str) -> Callable[[str, str], float]:
    def score(prediction: str, reference: str) -> float:
        if kind not in _ROUGE:  # the scorer loads a stemmer; once per kind and process
            from rouge_score import rouge_scorer

            _ROUGE[kind] = rouge_scorer.RougeScorer([kind], use_stemmer=True)
        return _ROUGE[kind].score(reference, prediction)[kind].fmeasure

    return score


def _bleu(prediction: str, reference: str) -> float:
    import sacrebleu

    return sacrebleu.sentence_bleu(prediction, [reference]).score / 100


SIMILARITY: dict[str, Callable[[str, str], float]] = {
    "fuzzy_match": lambda a, b: difflib.SequenceMatcher(None, a, b).ratio(),
    "bleu": _bleu,
    "token_f1": token_f1,
    "exact_match": exact_match,
    **{f"rouge_{n}": _rouge(f"rouge{n}") for n in range(1, 6)},
    "rouge_l": _rouge("rougeL"),
}


class TextSimilarity(_Check):
    def grade(self, sample: Sample, item: Item) -> float:
        where = scope(sample, item)
        return SIMILARITY[self.cfg.evaluation_metric](render(self.cfg.input, where), render(self.cfg.reference, where))


class Python(_Check):
    """The user's `grade(sample, item)`, compiled once; sample and item are plain dicts (as OpenAI passes)."""

    def __init__(self, cfg, where: str) -> None:
        super().__init__(cfg)
        if cfg.file is not None:
            path = Path(cfg.file).expanduser()
            if not path.is_file():
                raise ConfigError(
                    f"python grader '{cfg.name}': file not found",
                    [
                        Problem(
                            f"{where}.file",
                            f"no file {path}",
                            "give the path of a .py file defining grade(sample, item)",
                        )
                    ],
                )
            source, self.code_file, key = path.read_text(encoding="utf-8"), str(path), f"{where}.file"
        else:
            source, self.code_file, key = cfg.source, f"<{where}.source>", f"{where}.source"
        namespace: dict[str, Any] = {"__name__": f"tuneforge_grader_{cfg.name}"}
        try:
            exec(
                compile(source, self.code_file, "exec"), namespace
            )  # the user's own grader code, as a custom metric is
        except (
            Exception
        ) as exc:  # SyntaxError, or an import that fails at load: a config problem, before any model loads
            line = f" at line {exc.lineno}" if isinstance(exc, SyntaxError) else ""
            raise ConfigError(
                f"python grader '{cfg.name}' does not load",
                [Problem(key, f"{type(exc).__name__}{line}: {exc}", "fix the grader code")],
            ) from None
        self.fn = namespace.get("grade")
        if not callable(self.fn):
            raise ConfigError(
                f"python grader '{cfg.name}' has no grade function",
                [Problem(key, "no function named grade", "define grade(sample, item) -> float")],
            )

    def grade(self, sample: Sample, item: Item) -> float:
        value = self.fn(sample.as_dict(), dict(item))
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"grade returned {value!r}, not a number")
        return float(value)


class Multi(_Check):
    """Sub-graders graded as batches (a judge among them keeps its concurrency), then the formula per item.
    A sub-grader's error scores it 0 in the formula and is that item's error."""

    def __init__(self, cfg, where: str) -> None:
        super().__init__(cfg)
        self.graders = {k: build_grader(g, f"{where}.graders.{k}") for k, g in cfg.graders.items()}
        self.tree = parse_formula(cfg.calculate_output, set(cfg.graders))

    def grade(self, sample: Sample, item: Item) -> float:
        batch = self.grade_batch([sample], [item])
        if batch.errors[0]:
            raise ValueError(batch.errors[0])
        return batch.scores[0]

    def grade_batch(self, samples: Sequence[Sample], items: Sequence[Item]) -> GradeBatch:
        subs = {k: g.grade_batch(samples, items) for k, g in self.graders.items()}
        scores, errors = [], []
        for i in range(len(samples)):
            failed = [f"{k}: {b.errors[i]}" for k, b in subs.items() if b.errors[i]]
            try:
                value = evaluate(self.tree, {k: b.scores[i] for k, b in subs.items()})
            except (ArithmeticError, ValueError) as exc:  # 1/0, log(0), sqrt(-1) on this item's scores
                value, failed = 0.0, failed + [f"calculate_output: {type(exc).__name__}: {exc}"]
            scores.append(value)
            errors.append("; ".join(failed) or None)
        return GradeBatch(scores, errors)


def build_grader(cfg, where: str) -> Grader:
    """The grader a validated spec describes; `where` is its config key (eval.graders[0]) for errors."""
    from tuneforge.eval.graders.judge import ScoreModel

    if isinstance(cfg, spec.Python):
        return Python(cfg, where)
    if isinstance(cfg, spec.Multi):
        return Multi(cfg, where)
    if isinstance(cfg, spec.ScoreModel):
        return ScoreModel(cfg)
    return {
        spec.StringCheck: StringCheck,
        spec.Regex: Regex,
        spec.JsonMatch: JsonMatch,
        spec.TextSimilarity: TextSimilarity,
    }[type(cfg)](cfg)
