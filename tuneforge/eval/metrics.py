"""Task metrics on generated text, by task, plus a user-supplied metric.

Two kinds: *example* metrics score one prediction against one reference (exact match, token
F1, ROUGE-L, accuracy, a user metric) and are averaged; *corpus* metrics only make sense
over a whole set (macro-F1, BLEU, chrF, entity F1). The bootstrap treats both alike by
re-computing the statistic on resampled example indices (see `bootstrap.py`).
BLEU and chrF keep sacrebleu's 0-100 scale; every other metric is in [0, 1].
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tuneforge.errors import ConfigError, Problem

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall after normalisation (SQuAD's F1)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _label(text: str) -> str:
    """A generated class label: first line, trimmed, lower case, without trailing punctuation."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first.strip().strip(string.punctuation + " ").lower()


def accuracy(prediction: str, reference: str) -> float:
    return float(_label(prediction) == _label(reference))


def macro_f1(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Unweighted mean of per-class F1 over the classes seen in the references or predictions."""
    preds, refs = [_label(p) for p in predictions], [_label(r) for r in references]
    classes = sorted(set(refs) | set(preds))
    if not classes:
        return 0.0
    scores = []
    for c in classes:
        tp = sum(p == c and r == c for p, r in zip(preds, refs))
        fp = sum(p == c and r != c for p, r in zip(preds, refs))
        fn = sum(p != c and r == c for p, r in zip(preds, refs))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


_ROUGE = None


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence), with Porter stemming."""
    global _ROUGE
    if _ROUGE is None:  # building the scorer loads the stemmer; once per process
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return _ROUGE.score(reference, prediction)["rougeL"].fmeasure


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu defaults: 13a tokenisation, 0-100)."""
    import sacrebleu

    return sacrebleu.corpus_bleu(list(predictions), [list(references)]).score


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (sacrebleu, character 6-grams, 0-100)."""
    import sacrebleu

    return sacrebleu.corpus_chrf(list(predictions), [list(references)]).score


Entity = tuple[str, str]  # (type, text) for generated text; (type, "start:end") for BIO tags


def bio_entities(tags: Sequence[str]) -> set[Entity]:
    """Spans of a BIO tag sequence as (type, 'start:end'); an I- without a B- opens a span (conlleval)."""
    spans, start, kind = set(), None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, label = tag.partition("-")
        if start is not None and (prefix in ("O", "B") or label != kind):
            spans.add((kind, f"{start}:{i}"))
            start = None
        if prefix == "B" or (prefix == "I" and start is None):
            start, kind = i, label
    return spans


def text_entities(text: str) -> set[Entity]:
    """Entities written as 'TYPE: text' items separated by ';' or new lines (the chat NER format)."""
    out = set()
    for item in re.split(r"[;\n]", text):
        kind, sep, span = item.partition(":")
        if sep and kind.strip() and span.strip():
            out.add((kind.strip().upper(), normalize_answer(span)))
    return out


def entity_f1(predictions: Sequence[str | Sequence[str]], references: Sequence[str | Sequence[str]]) -> float:
    """Micro F1 over exact (type, span) matches; items are generated text or BIO tag lists."""
    tp = n_pred = n_ref = 0
    for p, r in zip(predictions, references):
        pe = text_entities(p) if isinstance(p, str) else bio_entities(p)
        re_ = text_entities(r) if isinstance(r, str) else bio_entities(r)
        tp, n_pred, n_ref = tp + len(pe & re_), n_pred + len(pe), n_ref + len(re_)
    if n_pred + n_ref == 0:
        return 1.0
    return 2 * tp / (n_pred + n_ref)


def _calls(prediction: str, reference: str) -> tuple[list, list]:
    from tuneforge.data.tool_calls import parse_tool_calls, sniff_tool_format

    expected = parse_tool_calls(reference, "hermes").calls  # references are written in the fallback syntax
    return expected, parse_tool_calls(prediction, sniff_tool_format(prediction)).calls


def _matched(expected: list, predicted: list, key: Callable) -> float:
    """Calls paired one to one by `key` (any order), over the larger count; 1 when neither side calls."""
    if not expected and not predicted:
        return 1.0
    left = [key(c) for c in predicted]
    hits = 0
    for want in map(key, expected):
        if want in left:
            left.remove(want)
            hits += 1
    return hits / max(len(expected), len(predicted))


def tool_call_match(prediction: str, reference: str) -> float:
    """Share of calls right: same function name and arguments equal as parsed JSON (key order aside), each
    expected call paired with one predicted call in any order, over the larger of the two counts (an extra or
    missing call costs). An answer whose call does not parse has no calls. 1 when neither calls a tool."""
    expected, predicted = _calls(prediction, reference)
    return _matched(expected, predicted, lambda c: (c.name, json.dumps(c.arguments, sort_keys=True)))


def tool_name_match(prediction: str, reference: str) -> float:
    """As tool_call_match on the function names only: did the model pick the right tools?"""
    expected, predicted = _calls(prediction, reference)
    return _matched(expected, predicted, lambda c: c.name)


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # "example": fn(pred, ref) -> float, averaged | "corpus": fn(preds, refs) -> float
    fn: Callable
    higher_is_better: bool = True
    scale: float = 1.0  # 100 for BLEU/chrF: what "a perfect score" is, to size meaningful gaps

    def per_example(self, predictions: Sequence, references: Sequence) -> list[float]:
        return [float(self.fn(p, r)) for p, r in zip(predictions, references)]


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("exact_match", "example", exact_match),
        Metric("token_f1", "example", token_f1),
        Metric("accuracy", "example", accuracy),
        Metric("macro_f1", "corpus", macro_f1),
        Metric("rouge_l", "example", rouge_l),
        Metric("bleu", "corpus", bleu, scale=100.0),
        Metric("chrf", "corpus", chrf, scale=100.0),
        Metric("entity_f1", "corpus", entity_f1),
        Metric("tool_call_match", "example", tool_call_match),
        Metric("tool_name_match", "example", tool_name_match),
    )
}
TASK_METRICS: dict[str, list[str]] = {
    "qa": ["exact_match", "token_f1"],
    "classification": ["accuracy", "macro_f1"],
    "summarization": ["rouge_l"],
    "translation": ["bleu", "chrf"],
    "ner": ["entity_f1"],
    "tool_calls": ["tool_call_match", "tool_name_match"],
}
PRIMARY: dict[str, str] = {task: names[-1] if task == "qa" else names[0] for task, names in TASK_METRICS.items()}


def select_metrics(task: str, names: list[str] | None = None, custom: str | None = None) -> list[Metric]:
    """The metrics to report: explicit `names`, else the task's defaults; plus the custom metric."""
    names = names or TASK_METRICS[task]
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ConfigError(
            "unknown metric name(s)",
            [Problem("eval.metrics", f"'{n}' is not a metric", f"use one of {', '.join(METRICS)}") for n in unknown],
        )
    chosen = [METRICS[n] for n in names]
    return chosen + ([load_custom_metric(custom)] if custom else [])


def load_custom_metric(spec: str) -> Metric:
    """'path/to/file.py:function' or 'package.module:function' -> an example metric named after the function."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ConfigError(
            f"invalid custom metric {spec!r}",
            [
                Problem(
                    "eval.custom_metric",
                    "expected 'file.py:function' or 'module:function'",
                    "e.g. my_metrics.py:polite",
                )
            ],
        )
    try:
        if target.endswith(".py"):
            path = Path(target).expanduser()
            spec_ = importlib.util.spec_from_file_location(f"tuneforge_user_metric_{path.stem}", path)
            if spec_ is None or not path.exists():
                raise FileNotFoundError(str(path))
            module = importlib.util.module_from_spec(spec_)
            spec_.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
        fn = getattr(module, attr)
    except (ImportError, FileNotFoundError, AttributeError, SyntaxError) as exc:
        raise ConfigError(
            f"cannot load custom metric {spec!r}",
            [
                Problem(
                    "eval.custom_metric", f"{type(exc).__name__}: {exc}", "check the file path and the function name"
                )
            ],
        ) from None
    if not callable(fn):
        raise ConfigError(
            f"custom metric {spec!r} is not callable",
            [
                Problem(
                    "eval.custom_metric",
                    f"{attr} is a {type(fn).__name__}",
                    "name a function f(prediction, reference) -> float",
                )
            ],
        )
    return Metric(attr, "example", fn)
