"""`validate_file`: every problem of a data file, located, counted, never a crash.

Used by `tuneforge data validate` and by the service for uploads. It streams the file;
memory is bounded by `max_issues` stored issues, a label counter and 18 bytes per
example for the duplicate index (so 1M examples need ~18 MB).
"""

from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.data import token_count
from tuneforge.data.dedup import first_occurrence
from tuneforge.data.formats import REFUSED
from tuneforge.data.hashing import content_hash
from tuneforge.data.issues import Issue
from tuneforge.data.length import OverLength
from tuneforge.data.readers import Checked, Tally, check_format, iter_checked, parse_mapping
from tuneforge.data.sources import DEFAULT_TEXT_UNIT, MAX_RECORD_BYTES
from tuneforge.data.types import Conversation, LabelledAnswer, LabelledExample, Message, PreferencePair, TokenExample
from tuneforge.errors import DataError, Problem


@dataclass
class ValidationReport:
    file: str
    format: str | None = None
    records: int = 0  # records read (valid or not)
    valid: int = 0
    errors: list[Issue] = field(default_factory=list)  # the first `max_issues`; counts are complete
    warnings: list[Issue] = field(default_factory=list)
    error_counts: Counter = field(default_factory=Counter)
    warning_counts: Counter = field(default_factory=Counter)
    label_counts: Counter = field(default_factory=Counter)
    skipped_checks: list[str] = field(default_factory=list)
    unused_fields: Tally = field(
        default_factory=Tally
    )  # top-level fields no format reads: kept in metadata, never trained on
    refused: Tally = field(default_factory=Tally)  # records of kinds we recognise but do not support (KTO, multimodal)
    max_issues: int = 1000
    length: OverLength | None = None  # examples over max_length (with --max-length / --config: data.overlength)
    overlength: str | None = None

    @property
    def ok(self) -> bool:
        return not self.error_counts

    @property
    def truncated(self) -> bool:
        return len(self.errors) < sum(self.error_counts.values()) or len(self.warnings) < sum(
            self.warning_counts.values()
        )

    def add(self, issue: Issue) -> None:
        errors = issue.severity == "error"
        (self.error_counts if errors else self.warning_counts)[issue.kind] += 1
        if issue.kind in REFUSED:
            self.refused.add(issue.kind, issue.where)
        target = self.errors if errors else self.warnings
        if len(target) < self.max_issues:
            target.append(issue)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "format": self.format,
            "ok": self.ok,
            "records": self.records,
            "valid": self.valid,
            "invalid": self.records - self.valid,
            "error_counts": dict(self.error_counts),
            "warning_counts": dict(self.warning_counts),
            **({"over_max_length": self.length.to_dict(self.overlength)} if self.length and self.overlength else {}),
            "errors": [i.to_dict() for i in self.errors],
            "warnings": [i.to_dict() for i in self.warnings],
            "truncated": self.truncated,
            "label_counts": dict(self.label_counts),
            "skipped_checks": self.skipped_checks,
            "unused_fields": self.unused_fields.to_dict(),
            "refused": self.refused.lines(),
        }


@dataclass
class _Duplicates:
    """Hash, file and line per valid example; duplicates are found by one sort at the end."""

    hashes: array = field(default_factory=lambda: array("q"))
    files: array = field(default_factory=lambda: array("H"))
    lines: array = field(default_factory=lambda: array("l"))
    names: list[str] = field(default_factory=list)

    def add(self, h: int, file: str, line: int | None) -> None:
        if not self.names or self.names[-1] != file:
            self.names.append(file)
        self.hashes.append(h)
        self.files.append(min(len(self.names) - 1, 65535))
        self.lines.append(line or 0)

    def issues(self) -> list[Issue]:
        first = first_occurrence(np.frombuffer(self.hashes, dtype=np.int64))
        out = []
        for i in np.flatnonzero(first != np.arange(len(first))):
            j = first[i]
            where = f"{self.names[self.files[j]]}:{self.lines[j]}"
            out.append(
                Issue(
                    "duplicate",
                    f"same content as {where}",
                    self.names[self.files[i]],
                    self.lines[i],
                    fix="remove it (tuneforge data prepare deduplicates)",
                )
            )
        return out


def validate_file(
    path: str | Path,
    format: str = "auto",
    *,
    mapping: str | dict[str, str] | None = None,
    labels: list[str] | None = None,
    tokenizer: Any = None,
    max_tokens: int | None = None,
    min_examples: int = 10,
    min_answer_chars: int = 3,
    imbalance_ratio: float = 10.0,
    max_issues: int = 1000,
    max_record_bytes: int = MAX_RECORD_BYTES,
    include: tuple[str, ...] | list[str] = (),
    text_unit: str = DEFAULT_TEXT_UNIT,
    system_prompt: str = "keep",
    overlength: str | None = None,
) -> ValidationReport:
    """Check a data file completely; never raises on bad content (only on a bad call).

    labels: the allowed label set (classification/NER) - other labels are errors.
    tokenizer: a tokenizer object or model name; with it, examples over `max_tokens`
    (default: the tokenizer's context window) are errors.
    min_examples: fewer valid examples than this is an error (OpenAI asks for 10).
    system_prompt: keep | fold | drop, as data.system_prompt: with a tokenizer, every chat record is
    rendered with its chat template and its assistant tokens located as training will (`chat_template` errors).
    overlength: data.overlength (truncate | drop | error) - then `max_tokens` is the run's model.max_length, and
    longer examples are warnings `over_max_length` (truncate, drop) or errors `too_long` (error), counted in
    `report.length`; None: the context window, every longer example an error.
    """
    check_format(format)  # a wrong call raises; a wrong file only ever gives issues
    if system_prompt not in ("keep", "fold", "drop"):
        raise DataError(
            f"unknown system_prompt {system_prompt!r}",
            [Problem("--system-prompt", f"{system_prompt!r} is not a choice", "use keep, fold or drop")],
        )
    mapping = parse_mapping(mapping)
    report = ValidationReport(str(path), max_issues=max_issues, overlength=overlength)
    if isinstance(tokenizer, (str, Path)):
        tokenizer = token_count.load_tokenizer(tokenizer)
    if tokenizer is None:
        report.skipped_checks.append("too_long: no tokenizer given (pass --model)")
    elif max_tokens is None:
        max_tokens = token_count.context_window(tokenizer)
    allowed = set(labels) if labels else None
    dups = _Duplicates()
    try:
        for checked in iter_checked(path, format, mapping, max_record_bytes, include, text_unit):
            _check_record(checked, report, dups, allowed, tokenizer, max_tokens, min_answer_chars, system_prompt)
            if report.length is None and max_tokens is not None and tokenizer is not None:
                report.length = OverLength(max_tokens, 0)
            if report.length is not None and checked.example is not None:
                report.length.examples += 1
    except DataError as exc:  # the path itself is wrong (missing, empty folder)
        for p in exc.problems:
            report.add(Issue("unreadable_file", p.message, p.where, fix=p.fix))
        return report
    for issue in dups.issues():
        report.add(issue)
    _file_checks(report, min_examples, imbalance_ratio)
    return report


def _check_record(
    checked: Checked,
    report: ValidationReport,
    dups: _Duplicates,
    allowed: set[str] | None,
    tokenizer: Any,
    max_tokens: int | None,
    min_answer_chars: int,
    system_prompt: str = "keep",
) -> None:
    report.records += checked.example is not None or bool(checked.errors)
    report.format = report.format or checked.format
    for issue in checked.issues:
        report.add(issue)
    ex = checked.example
    if ex is None:
        return
    for key in checked.unused:
        report.unused_fields.add(key, f"{checked.file}:{checked.line}")
    extra = _example_issues(ex, allowed, tokenizer, max_tokens, min_answer_chars, system_prompt, report.overlength)
    if any(i.kind in ("too_long", "over_max_length") for i in extra):
        if report.length is None:
            report.length = OverLength(max_tokens or 0, 0)
        report.length.places.append(f"{checked.file}:{checked.line}")
    for issue in extra:
        report.add(Issue(issue.kind, issue.message, checked.file, checked.line, issue.field, issue.fix))
    if any(i.severity == "error" for i in extra):
        return
    report.valid += 1
    dups.add(content_hash(ex), checked.file, checked.line)
    if isinstance(ex, LabelledExample):
        report.label_counts[ex.label] += 1


def _example_issues(
    ex: Any,
    allowed: set[str] | None,
    tokenizer: Any,
    max_tokens: int | None,
    min_chars: int,
    system_prompt: str = "keep",
    overlength: str | None = None,
) -> list[Issue]:
    issues = []
    if isinstance(ex, LabelledExample) and allowed is not None and ex.label not in allowed:
        issues.append(
            Issue(
                "label_not_in_set",
                f"label {ex.label!r} is not one of {sorted(allowed)}",
                field="label",
                fix="fix the label or extend --labels",
            )
        )
    if isinstance(ex, TokenExample) and allowed is not None:
        entity_types = {t[2:] for t in ex.tags if t != "O"}
        for t in sorted(entity_types - allowed):
            issues.append(Issue("label_not_in_set", f"entity type {t!r} is not one of {sorted(allowed)}", field="tags"))
    answer = (
        ex.reference
        if isinstance(ex, Conversation)
        else ex.chosen
        if isinstance(ex, PreferencePair)
        else ex.completion
        if isinstance(ex, LabelledAnswer)
        else None
    )
    if answer is not None and len(answer.strip()) < min_chars:
        issues.append(
            Issue("short_answer", f"answer has {len(answer.strip())} characters: {answer.strip()!r}", field="answer")
        )
    if tokenizer is not None and max_tokens is not None:
        chat, n = _chat_issues(ex, tokenizer, system_prompt)
        issues += chat
        n = token_count.count_tokens(tokenizer, ex) if n is None and not chat else n
        if n is not None and n > max_tokens and overlength in ("truncate", "drop"):
            what = "truncated to" if overlength == "truncate" else "dropped from training:"
            issues.append(
                Issue(
                    "over_max_length",
                    f"{n} tokens, will be {what} model.max_length={max_tokens} (data.overlength: {overlength})",
                    fix="shorten or split the example, or raise model.max_length",
                )
            )
        elif n is not None and n > max_tokens:
            issues.append(
                Issue(
                    "too_long",
                    f"{n} tokens, more than "
                    + (f"model.max_length={max_tokens}" if overlength else f"the context window of {max_tokens}"),
                    fix="shorten or split the example, or raise model.max_length",
                )
            )
    return issues


def _chat_issues(ex: Any, tokenizer: Any, system_prompt: str) -> tuple[list[Issue], int | None]:
    """Chat records through the chat template exactly as training encodes them: (issues, token count).

    (None, no issues) for other examples and for tokenizers without chat support (then count_tokens counts).
    """
    chat = isinstance(ex, (Conversation, PreferencePair, LabelledAnswer))
    if not chat or not hasattr(tokenizer, "apply_chat_template"):
        return [], None
    from tuneforge.data.tokenize import encode_conversation  # needs transformers' tokenizer API only here

    convs = [ex]
    if not isinstance(ex, Conversation):  # a preference pair or a judged answer (KTO): each answer after the prompt
        answers = [ex.completion] if isinstance(ex, LabelledAnswer) else [ex.chosen, ex.rejected]
        convs = [Conversation([*ex.prompt, Message("assistant", a)]) for a in answers]
    try:
        n = max(len(encode_conversation(tokenizer, c, 10**9, system_prompt).input_ids) for c in convs)
    except DataError as exc:
        return [Issue("chat_template", p.message, fix=p.fix) for p in exc.problems], None
    messages = ex.messages if isinstance(ex, Conversation) else ex.prompt
    if system_prompt == "drop" and any(m.role == "system" for m in messages):
        return [
            Issue("system_prompt_dropped", "the system prompt is removed (data.system_prompt: drop)", field="messages")
        ], n
    return [], n


def _file_checks(report: ValidationReport, min_examples: int, imbalance_ratio: float) -> None:
    if report.records == 0:
        report.add(Issue("empty_file", "no records in the file", report.file, fix="add at least one example"))
    elif report.valid < min_examples and (report.valid or not report.error_counts):  # a broken file says so already
        report.add(
            Issue(
                "too_few_examples",
                f"{report.valid} valid example(s), at least {min_examples} needed",
                report.file,
                fix="add more examples",
            )
        )
    if len(report.label_counts) >= 2:
        (top, most), (low, least) = report.label_counts.most_common(1)[0], report.label_counts.most_common()[-1]
        if most >= imbalance_ratio * least:
            report.add(
                Issue(
                    "label_imbalance",
                    f"label {top!r} has {most} examples, {low!r} only {least} (ratio {most / least:.1f})",
                    report.file,
                    fix="collect more of the rare labels or use class weights",
                )
            )
