"""File formats -> a stream of raw records (parsed values with their line numbers).

Everything streams: JSONL, CSV, Parquet and text are read record by record, so a file
larger than memory works. A JSON array is parsed whole (a single JSON value cannot be
streamed with the standard library); use JSONL for big data.

Byte-level problems (binary files, bad UTF-8, BOMs, broken JSON, huge lines) become
`Issue`s on the record and never exceptions: any byte sequence yields issues, not crashes.
"""

from __future__ import annotations

import csv
import fnmatch
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.data.issues import Issue

SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".txt": "text",
    ".md": "text",
}
# What a folder is read for: data files only. Anything else (README.md, LICENSE, dataset_info.json, hidden
# files) is named in one `skipped_files` warning and read only when an `include` glob asks for it.
FOLDER_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".txt")
_NOT_DATA = ("readme*", "license*", "licence*", "changelog*", "dataset_info.json", "dataset_infos.json", ".*")
TEXT_UNITS = ("paragraph", "line", "file")
DEFAULT_TEXT_UNIT = "paragraph"  # blank-line separated paragraphs: documents and articles stay whole, files are split
LONG_PARAGRAPH_LINES = 200  # a paragraph this long suggests one document per line (pass text_unit=line)
MAX_RECORD_BYTES = 8 * 1024 * 1024  # one record above this is rejected without being held in memory
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_ENCODING_FIX = "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in > out`)"
# Columns that hold nested values; in CSV they are written as JSON strings.
_NESTED_COLUMNS = (
    "messages",
    "conversations",
    "tokens",
    "tags",
    "ner_tags",
    "prompt",
    "chosen",
    "rejected",
    "metadata",
)


class _Nothing:
    def __repr__(self) -> str:
        return "NOTHING"


NOTHING: Any = _Nothing()


@dataclass
class RawRecord:
    file: str
    line: int | None
    value: Any = NOTHING  # the parsed record, or NOTHING when it could not be parsed
    issues: list[Issue] = field(default_factory=list)
    raw: str = ""  # the record's text as read (for rejects.jsonl); only set when unparsable


def list_files(path: Path, include: Iterable[str] = ()) -> list[Path]:
    """A file, or the files a folder is read for (sorted, so runs are reproducible)."""
    return folder_files(path, include)[0] if path.is_dir() else [path]


def folder_files(path: Path, include: Iterable[str] = ()) -> tuple[list[Path], list[Path]]:
    """(files read, files skipped) of a folder: data files, plus any file matching an `include` glob
    (matched against the name and the path inside the folder)."""
    include = tuple(include)
    read, skipped = [], []
    for p in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = p.relative_to(path).as_posix()
        if any(fnmatch.fnmatch(p.name, g) or fnmatch.fnmatch(rel, g) for g in include):
            read.append(p)
        elif p.suffix.lower() in FOLDER_SUFFIXES and not any(
            fnmatch.fnmatch(part.lower(), g) for part in rel.split("/") for g in _NOT_DATA
        ):
            read.append(p)
        else:
            skipped.append(p)
    return read, skipped


def skipped_issue(folder: Path, skipped: list[Path]) -> Issue:
    names = ", ".join(p.relative_to(folder).as_posix() for p in skipped[:10]) + (
        f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
    )
    return Issue(
        "skipped_files",
        f"{len(skipped)} file(s) not read: {names} (a folder is read for {', '.join(FOLDER_SUFFIXES)} "
        "files, except README/LICENSE/dataset_info.json and hidden files)",
        str(folder),
        fix="pass --include GLOB to read them as data",
    )


def container_of(path: Path, default: str = "jsonl") -> str:
    """The container of a file by its suffix; an unknown suffix is `default`
    (text for files a folder's --include adds)."""
    return SUFFIXES.get(path.suffix.lower(), default)


def iter_raw(
    path: Path, text_mode: bool = False, max_record_bytes: int = MAX_RECORD_BYTES, text_unit: str = DEFAULT_TEXT_UNIT
) -> Iterator[RawRecord]:
    """Raw records of one file. `text_mode` reads any file as raw text, split by `text_unit`."""
    name = str(path)
    if not text_mode and container_of(path) == "parquet":
        yield from _iter_parquet(path)
        return
    try:
        with path.open("rb") as fh:
            head = fh.read(8192)
    except OSError as exc:
        yield RawRecord(
            name, None, issues=[Issue("unreadable_file", str(exc), name, fix="check the path and permissions")]
        )
        return
    if head.startswith(_UTF16_BOMS):
        yield RawRecord(name, 1, issues=[Issue("encoding", "file is UTF-16, not UTF-8", name, 1, fix=_ENCODING_FIX)])
        return
    if b"\x00" in head:
        yield RawRecord(
            name,
            1,
            issues=[
                Issue(
                    "binary_file",
                    "file contains NUL bytes: it is binary, not text",
                    name,
                    1,
                    fix="pass a JSONL, JSON, CSV, Parquet or text file",
                )
            ],
        )
        return
    if text_mode:
        yield from _iter_text(path, max_record_bytes, text_unit)
        return
    reader = {"jsonl": _iter_jsonl, "json": _iter_json, "csv": _iter_csv, "tsv": _iter_csv, "text": _iter_text}[
        container_of(path)
    ]
    yield from reader(path, max_record_bytes)


def _bom_issue(name: str) -> Issue:
    return Issue("bom", "file starts with a UTF-8 byte-order mark (ignored)", name, 1, fix="save without BOM")


def _read_lines(path: Path, limit: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) per line; None for a line over `limit`, which is skipped in chunks."""
    with path.open("rb") as fh:
        lineno = 0
        while True:
            chunk = fh.readline(limit + 1)
            if not chunk:
                return
            lineno += 1
            if len(chunk) > limit and not chunk.endswith(b"\n"):
                while chunk and not chunk.endswith(b"\n"):  # drain the rest of the line
                    chunk = fh.readline(1 << 20)
                yield lineno, None
                continue
            yield lineno, chunk


def _decode(raw: bytes, name: str, lineno: int, issues: list[Issue]) -> str | None:
    if lineno == 1 and raw.startswith(_UTF8_BOM):
        raw = raw[len(_UTF8_BOM) :]
        issues.append(_bom_issue(name))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        issues.append(
            Issue("encoding", f"invalid UTF-8 at byte {exc.start} of the line", name, lineno, fix=_ENCODING_FIX)
        )
        return None


def _surrogate_issue(text: str, value: Any, name: str, lineno: int) -> Issue | None:
    """JSON escapes like "\\ud800" decode to lone surrogates, which no UTF-8 writer accepts."""
    if "\\ud" not in text and "\\uD" not in text:  # the only way a surrogate gets in
        return None
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
        return None
    except UnicodeEncodeError:
        return Issue(
            "encoding",
            "a string holds a lone surrogate escape (\\ud800-\\udfff): not valid Unicode",
            name,
            lineno,
            fix="escape characters outside the BMP as a full surrogate pair, or write them as UTF-8",
        )


def _too_large(name: str, lineno: int, limit: int) -> Issue:
    return Issue(
        "record_too_large",
        f"line is longer than {limit} bytes",
        name,
        lineno,
        fix="split the record or raise max_record_bytes",
    )


def _iter_jsonl(path: Path, limit: int) -> Iterator[RawRecord]:
    name = str(path)
    for lineno, raw in _read_lines(path, limit):
        if raw is None:
            yield RawRecord(name, lineno, issues=[_too_large(name, lineno, limit)])
            continue
        issues: list[Issue] = []
        text = _decode(raw, name, lineno, issues)
        if text is None:
            yield RawRecord(name, lineno, issues=issues, raw=raw.decode("utf-8", "replace").rstrip("\n"))
            continue
        if not text.strip():
            if issues:  # a BOM alone on an empty line: report it anyway
                yield RawRecord(name, lineno, issues=issues)
            continue
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            msg = f"{exc.msg} (column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            issues.append(Issue("invalid_json", msg, name, lineno, fix="each line must be one complete JSON object"))
            yield RawRecord(name, lineno, issues=issues, raw=text.rstrip("\n"))
            continue
        bad = _surrogate_issue(text, value, name, lineno)
        yield (
            RawRecord(name, lineno, issues=issues + [bad], raw=text.rstrip("\n"))
            if bad
            else RawRecord(name, lineno, value, issues)
        )


def _iter_json(path: Path, limit: int) -> Iterator[RawRecord]:
    """A JSON array of records (each located by the line it starts on) or a single object."""
    name = str(path)
    raw = path.read_bytes()
    issues: list[Issue] = []
    text = _decode(raw, name, 1, issues)
    if text is None:
        yield RawRecord(name, 1, issues=issues)
        return
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if not text.strip():
        yield from (RawRecord(name, 1, issues=[i]) for i in issues)
        return
    if text[pos] != "[":
        try:
            value, end = decoder.raw_decode(text, pos)
            if text[_skip_ws(text, end) :]:
                raise json.JSONDecodeError("extra data after the JSON value", text, _skip_ws(text, end))
            bad = _surrogate_issue(text, value, name, 1)
            yield RawRecord(name, 1, issues=issues + [bad]) if bad else RawRecord(name, 1, value, issues)
        except (json.JSONDecodeError, RecursionError) as exc:
            yield RawRecord(
                name,
                _line_of(text, getattr(exc, "pos", 0)),
                issues=issues + [_json_issue(exc, text, name)],
                raw=text[:200],
            )
        return
    yield from _iter_json_array(text, pos + 1, name, issues)


def _iter_json_array(text: str, pos: int, name: str, issues: list[Issue]) -> Iterator[RawRecord]:
    decoder = json.JSONDecoder()
    line, counted = 1, 0
    while True:
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == "]":
            return
        line += text.count("\n", counted, pos)
        counted = pos
        start = pos
        try:
            value, pos = decoder.raw_decode(text, pos)
        except (json.JSONDecodeError, RecursionError) as exc:
            yield RawRecord(name, line, issues=issues + [_json_issue(exc, text, name)], raw=text[pos : pos + 200])
            return  # the rest of the array cannot be located reliably
        bad = _surrogate_issue(text[start:pos], value, name, line)
        yield RawRecord(name, line, issues=issues + [bad]) if bad else RawRecord(name, line, value, issues)
        issues = []
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos >= len(text) or text[pos] != "]":
            err = json.JSONDecodeError("expected ',' or ']' after an array item", text, min(pos, len(text)))
            yield RawRecord(name, _line_of(text, pos), issues=[_json_issue(err, text, name)])
            return


def _json_issue(exc: Exception, text: str, name: str) -> Issue:
    if isinstance(exc, json.JSONDecodeError):
        return Issue(
            "invalid_json",
            f"{exc.msg} (column {exc.colno})",
            name,
            _line_of(text, exc.pos),
            fix="fix the JSON syntax (truncated file?)",
        )
    return Issue("invalid_json", "nested too deeply", name, None, fix="flatten the record")


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _iter_csv(path: Path, limit: int) -> Iterator[RawRecord]:
    name = str(path)
    csv.field_size_limit(limit)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open("rb") as fb:
        bom = fb.read(3) == _UTF8_BOM
    if bom:
        yield RawRecord(name, 1, issues=[_bom_issue(name)])
    with path.open("r", encoding="utf-8-sig", errors="strict", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        try:
            for row in reader:
                yield _csv_record(row, name, reader.line_num)
        except UnicodeDecodeError as exc:
            yield RawRecord(
                name,
                reader.line_num + 1,
                issues=[
                    Issue("encoding", f"invalid UTF-8 ({exc.reason})", name, reader.line_num + 1, fix=_ENCODING_FIX)
                ],
            )
        except csv.Error as exc:
            yield RawRecord(
                name,
                reader.line_num,
                issues=[
                    Issue(
                        "invalid_json",
                        f"broken CSV: {exc}",
                        name,
                        reader.line_num,
                        fix="quote fields that contain the delimiter or newlines",
                    )
                ],
            )


def _csv_record(row: dict, name: str, lineno: int) -> RawRecord:
    if None in row:  # more cells than header columns
        return RawRecord(
            name,
            lineno,
            issues=[
                Issue(
                    "wrong_type",
                    "row has more cells than the header",
                    name,
                    lineno,
                    fix="quote fields that contain commas",
                )
            ],
            raw=str(row),
        )
    value: dict[str, Any] = {}
    for key, cell in row.items():
        if key in _NESTED_COLUMNS and cell and cell.lstrip()[:1] in "[{":
            try:
                cell = json.loads(cell)
            except json.JSONDecodeError as exc:
                return RawRecord(
                    name,
                    lineno,
                    issues=[Issue("invalid_json", f"column '{key}' is not valid JSON ({exc.msg})", name, lineno, key)],
                    raw=str(row),
                )
        value[key] = cell
    return RawRecord(name, lineno, value)


def _iter_parquet(path: Path) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq  # comes with `datasets`; imported lazily (slow import)

    name = str(path)
    try:
        pf = pq.ParquetFile(path)
        row = 0
        for batch in pf.iter_batches(batch_size=4096):
            for value in batch.to_pylist():
                row += 1
                yield RawRecord(name, row, value)
    except Exception as exc:  # pyarrow raises many types for corrupt files; all mean "unreadable"
        yield RawRecord(
            name,
            None,
            issues=[Issue("unreadable_file", f"not a readable Parquet file ({exc})", name, fix="re-export the file")],
        )


def _iter_text(path: Path, limit: int, unit: str = DEFAULT_TEXT_UNIT) -> Iterator[RawRecord]:
    """Text as {"text": ...} records located at their first line: one per paragraph (separated by blank
    lines), per non-blank line, or one per file. A record over `limit` bytes is cut there (paragraph, file)."""
    name = str(path)
    para: list[str] = []
    pending: list[Issue] = []  # a BOM warning rides on the first record
    start = size = 0

    def record() -> RawRecord:
        text = "".join(para).rstrip("\r\n") if unit == "line" else "".join(para).strip("\n")
        issues = list(pending)
        if unit == "paragraph" and len(para) >= LONG_PARAGRAPH_LINES:
            issues.append(
                Issue(
                    "long_paragraph",
                    f"a paragraph of {len(para)} lines (no blank line between them) became one record",
                    name,
                    start,
                    fix="if each line is a document, pass --text-unit line",
                )
            )
        if size > limit:
            issues.append(
                Issue(
                    "split_at_limit",
                    f"the {unit} is longer than {limit} bytes: it was cut into records of that size",
                    name,
                    start,
                    fix="use a smaller --text-unit or raise max_record_bytes",
                )
            )
        return RawRecord(name, start, {"text": text}, issues)

    for lineno, raw in _read_lines(path, limit):
        text = None if raw is None else _decode(raw, name, lineno, pending)
        if text is None:
            yield RawRecord(
                name, lineno, issues=[i for i in pending if i.kind != "bom"] or [_too_large(name, lineno, limit)]
            )
            pending = [i for i in pending if i.kind == "bom"]
            continue
        if text.strip() or (unit == "file" and para):
            start = start or lineno
            para.append(text)
            size += len(text)
        boundary = unit == "line" or (unit == "paragraph" and not text.strip())
        if (boundary or size > limit) and para:
            yield record()
            para, pending, start, size = [], [], 0, 0
    if para or pending:
        yield record() if para else RawRecord(name, start or 1, NOTHING, pending)
