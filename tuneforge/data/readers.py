"""Readers: files of any supported format -> in-memory examples (see data/types.py).

Containers (JSONL, JSON, CSV/TSV, Parquet, .txt/.md, folders of them) are read by
`sources`; record formats (chat, prompt/completion, Alpaca, ShareGPT, text,
classification, tokens, preference) are parsed by `formats`. `iter_checked` streams
both, one `Checked` record at a time, for the validator and `prepare`;
`read_examples` collects a whole file and raises one DataError listing every problem.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.data import dataset_info, formats, sources
from tuneforge.data import mapping as mapping_module
from tuneforge.data.issues import Issue, located
from tuneforge.data.types import Example
from tuneforge.errors import DataError, Problem

MAX_LISTED_PROBLEMS = 200  # a DataError lists this many problems and counts the rest


@dataclass
class Checked:
    """One record after parsing and checking: an example, or the reasons it has none."""

    file: str
    line: int | None
    example: Example | None
    issues: list[Issue] = field(default_factory=list)
    record: Any = sources.NOTHING  # the parsed record as read (before mapping), for rejects
    raw: str = ""  # the unparsable text, when there is no record
    format: str | None = None
    unused: list[str] = field(default_factory=list)  # top-level fields the format does not read (kept in metadata)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    def reject_entry(self) -> dict[str, Any]:
        """What rejects.jsonl stores for a record that was not kept."""
        original = self.record if self.record is not sources.NOTHING else self.raw
        return {"file": self.file, "line": self.line, "reasons": [i.to_dict() for i in self.errors], "record": original}


@dataclass
class Tally:
    """Count and first places per key (an issue kind, an unused field): what every summary prints."""

    counts: Counter = field(default_factory=Counter)
    first: dict[str, list[str]] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)  # the first message per key
    keep: int = 5

    def add(self, key: str, where: str, message: str = "") -> None:
        self.counts[key] += 1
        places = self.first.setdefault(key, [])
        if len(places) < self.keep:
            places.append(where)
        self.messages.setdefault(key, message)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {k: {"count": n, "first": self.first[k]} for k, n in sorted(self.counts.items())}

    def line(self, key: str, noun: str = "record") -> str:
        """One line for a key; refused kinds of data (KTO, multimodal) in their own words."""
        n, where = self.counts[key], f"first at {self.first[key][0]}"
        if key in formats.REFUSED:
            what, fix = formats.REFUSED[key]
            return f"{what}: {n} {noun}(s), {where}; {fix}"
        return f"{key}: {n} {noun}(s), {where}" + (f" ({self.messages[key]})" if self.messages.get(key) else "")

    def keys(self) -> list[str]:
        return [k for k, _ in self.counts.most_common()]

    def lines(self, noun: str = "record") -> list[str]:
        return [self.line(k, noun) for k in self.keys()]

    def problems(self, noun: str = "record") -> list[Problem]:
        return [Problem(self.first[k][0], self.line(k, noun)) for k in self.keys()]


def parse_mapping(spec: str | dict[str, str] | None) -> dict[str, str]:
    """`text=body,label=meta.stars` -> {"text": "body", "label": "meta.stars"} (ours=theirs; see data/mapping.py)."""
    return mapping_module.parse_mapping(spec)


def check_format(format: str) -> str:
    fmt = formats.canonical_format(format)
    if fmt != "auto" and fmt not in formats.FORMATS:
        raise DataError(
            f"unknown data format {format!r}",
            [Problem("--format", f"{format!r} is not a format", f"use auto or one of {', '.join(formats.FORMATS)}")],
        )
    return fmt


def iter_checked(
    path: str | Path,
    format: str = "auto",
    mapping: str | dict[str, str] | None = None,
    max_record_bytes: int = sources.MAX_RECORD_BYTES,
    include: Iterable[str] = (),
    text_unit: str = sources.DEFAULT_TEXT_UNIT,
) -> Iterator[Checked]:
    """Every record of a file or folder, parsed and checked, in order (streams).

    A folder yields its data files (and those matching an `include` glob); the files it does not
    read come first, as one `skipped_files` warning without a record. `text_unit` splits .txt files.
    """
    fmt, mapping = check_format(format), parse_mapping(mapping)
    described = dataset_info.match(path)
    if described is not None:  # LLaMA-Factory's dataset_info.json[#names]: its columns are the mapping
        yield from _iter_described(*described, fmt, mapping, max_record_bytes, text_unit)
        return
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"data file not found: {path}", [Problem(str(path), "no such file or folder", "check the path")]
        )
    if path.is_dir() and (path / "manifest.json").is_file() and (path / "train.jsonl").is_file():
        raise DataError(
            f"{path} is a prepared dataset",
            [
                Problem(
                    str(path),
                    "reading the whole folder would mix train, test and rejects",
                    f"pass one split, e.g. {path / 'train.jsonl'}",
                )
            ],
        )
    if text_unit not in sources.TEXT_UNITS:
        raise DataError(
            f"unknown text unit {text_unit!r}",
            [
                Problem(
                    "--text-unit", f"{text_unit!r} is not a text unit", f"use one of {', '.join(sources.TEXT_UNITS)}"
                )
            ],
        )
    files, skipped = sources.folder_files(path, include) if path.is_dir() else ([path], [])
    if skipped:
        yield Checked(str(path), None, None, [sources.skipped_issue(path, skipped)])
    if not files:
        raise DataError(
            f"no data files in {path}",
            [
                Problem(
                    str(path),
                    f"folder has no {'/'.join(sources.FOLDER_SUFFIXES)} files",
                    "pass --include GLOB to read other files (e.g. --include '*.md')",
                )
            ],
        )
    for file in files:
        yield from _iter_file(file, fmt, mapping, max_record_bytes, text_unit, "text" if path.is_dir() else "jsonl")


def _iter_described(
    info: Path, names: list[str], fmt: str, mapping: dict[str, str], limit: int, text_unit: str
) -> Iterator[Checked]:
    if mapping:
        raise DataError(
            "--map does not apply to a dataset_info.json",
            [Problem(str(info), "the description's columns and tags already name the fields", "edit its columns")],
        )
    for desc in dataset_info.load(info, names):
        files = sources.folder_files(desc.file)[0] if desc.file.is_dir() else [desc.file]
        for file in files:
            yield from _iter_file(file, fmt, desc.convert, limit, text_unit, "jsonl")


def _iter_file(
    path: Path, fmt: str, mapping: dict[str, str] | Callable, limit: int, text_unit: str, default: str
) -> Iterator[Checked]:
    """`mapping` renames columns, or is a converter record -> (record, issues) (a dataset description)."""
    text_file = sources.container_of(path, default) == "text"
    file_fmt = "text" if text_file and fmt in ("auto", "text") else (None if fmt == "auto" else fmt)
    for raw in sources.iter_raw(path, text_mode=text_file, max_record_bytes=limit, text_unit=text_unit):
        if raw.value is sources.NOTHING:
            yield Checked(raw.file, raw.line, None, raw.issues, raw=raw.raw, format=file_fmt)
            continue
        record, found = mapping(raw.value) if callable(mapping) else (formats.apply_mapping(raw.value, mapping), [])
        seen = formats.detect(record)
        issues = list(raw.issues) + located(found, raw.file, raw.line)
        if any(i.severity == "error" for i in found):
            yield Checked(raw.file, raw.line, None, issues, raw.value, format=file_fmt or seen)
            continue
        if file_fmt is None and seen is None:
            issues += located([_unknown_format(record)], raw.file, raw.line)
            yield Checked(raw.file, raw.line, None, issues, raw.value)
            continue
        file_fmt = file_fmt or seen
        if fmt == "auto" and seen is not None and seen != file_fmt:
            issues.append(
                Issue(
                    "mixed_format",
                    f"record looks like {seen} but the file is {file_fmt}",
                    raw.file,
                    raw.line,
                    fix="keep one format per file, or pass --format",
                )
            )
            yield Checked(raw.file, raw.line, None, issues, raw.value, format=file_fmt)
            continue
        example, found = formats.parse(record, file_fmt)
        issues += located(found, raw.file, raw.line)
        if example is not None and raw.line is not None:
            example.metadata.setdefault("source_line", raw.line)
            if hasattr(example, "source"):  # where errors found later (chat template, training) point
                example.source = f"{raw.file}:{raw.line}"
        unused = formats.unused_fields(record, file_fmt) if example is not None else []
        yield Checked(raw.file, raw.line, example, issues, raw.value, format=file_fmt, unused=unused)


def _unknown_format(record: Any) -> Issue:
    if not isinstance(record, dict):
        return formats.parse(record, "chat")[1][0]  # the not_object issue
    keys = ", ".join(sorted(map(str, record))[:8]) or "no keys"
    return Issue(
        "unknown_format",
        f"cannot tell the format from the keys ({keys})",
        fix="use messages / prompt+completion / instruction+output / conversations / text(+label) / tokens+tags / "
        "prompt+chosen+rejected (or another preference layout, see the README), or --map ours=theirs",
    )


def read_examples(
    path: str | Path,
    format: str = "auto",
    mapping: str | dict[str, str] | None = None,
    *,
    include: Iterable[str] = (),
    text_unit: str = sources.DEFAULT_TEXT_UNIT,
) -> list[Example]:
    """Read every example of `path`; raise DataError listing every bad record."""
    examples: list[Example] = []
    problems: list[Problem] = []
    refused = Tally()
    n_bad = 0
    for checked in iter_checked(path, format, mapping, include=include, text_unit=text_unit):
        errors = checked.errors
        if errors:
            n_bad += 1
            problems.extend(e.to_problem() for e in errors[: max(0, MAX_LISTED_PROBLEMS - len(problems))])
            for e in errors:
                if e.kind in formats.REFUSED:
                    refused.add(e.kind, e.where)
        elif checked.example is not None:
            examples.append(checked.example)
    if n_bad:
        head = "; ".join(refused.lines()) + "; " if refused.counts else ""
        raise DataError(
            f"{path}: {head}{n_bad} invalid record(s); run `tuneforge data validate {path}` for the full report",
            problems,
        )
    if not examples:
        raise DataError(f"{path}: no examples", [Problem(str(path), "the file is empty", "add at least one record")])
    return examples


def write_jsonl(examples: Iterable[Example], path: str | Path) -> int:
    """Write examples as JSONL (our canonical format); returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(json.dumps(ex.to_dict(), ensure_ascii=False, default=str) + "\n")
            n += 1
    return n
