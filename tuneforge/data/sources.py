"""File formats -> a stream of raw records (parsed values with their line numbers).

Everything streams: JSONL, CSV, Parquet and text are read record by record, so a file
larger than memory works. A JSON array is parsed whole (a single JSON value cannot be
streamed with the standard library); use JSONL for big data.

Byte-level problems (binary files, bad UTF-8, BOMs, broken JSON, huge lines) become
`Issue`s on the record and never exceptions: any byte sequence yields issues, not crashes.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tuneforge.data.issues import Issue

SUFFIXES = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
    ".parquet": "parquet", ".txt": "text", ".md": "text",
}
MAX_RECORD_BYTES = 8 * 1024 * 1024  # one record above this is rejected without being held in memory
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_ENCODING_FIX = "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in > out`)"
# Columns that hold nested values; in CSV they are written as JSON strings.
_NESTED_COLUMNS = ("messages", "conversations", "tokens", "tags", "ner_tags", "prompt", "chosen", "rejected", "metadata")


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


def list_files(path: Path) -> list[Path]:
    """A file, or every supported file under a folder (sorted, so runs are reproducible)."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    return [path]


def container_of(path: Path) -> str:
    return SUFFIXES.get(path.suffix.lower(), "jsonl")


def iter_raw(path: Path, text_mode: bool = False, max_record_bytes: int = MAX_RECORD_BYTES) -> Iterator[RawRecord]:
    """Raw records of one file. `text_mode` reads any file as raw text paragraphs."""
    name = str(path)
    if not text_mode and container_of(path) == "parquet":
        yield from _iter_parquet(path)
        return
    try:
        with path.open("rb") as fh:
            head = fh.read(8192)
    except OSError as exc:
        yield RawRecord(name, None, issues=[Issue("unreadable_file", str(exc), name, fix="check the path and permissions")])
        return
    if head.startswith(_UTF16_BOMS):
        yield RawRecord(name, 1, issues=[Issue("encoding", "file is UTF-16, not UTF-8", name, 1, fix=_ENCODING_FIX)])
        return
    if b"\x00" in head:
        yield RawRecord(name, 1, issues=[Issue("binary_file", "file contains NUL bytes: it is binary, not text", name, 1, fix="pass a JSONL, JSON, CSV, Parquet or text file")])
        return
    kind = "text" if text_mode else container_of(path)
    reader = {"jsonl": _iter_jsonl, "json": _iter_json, "csv": _iter_csv, "tsv": _iter_csv, "text": _iter_text}[kind]
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
        raw = raw[len(_UTF8_BOM):]
        issues.append(_bom_issue(name))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        issues.append(Issue("encoding", f"invalid UTF-8 at byte {exc.start} of the line", name, lineno, fix=_ENCODING_FIX))
        return None


def _surrogate_issue(text: str, value: Any, name: str, lineno: int) -> Issue | None:
    """JSON escapes like "\\ud800" decode to lone surrogates, which no UTF-8 writer accepts."""
    if "\\ud" not in text and "\\uD" not in text:  # the only way a surrogate gets in
        return None
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
        return None
    except UnicodeEncodeError:
        return Issue("encoding", "a string holds a lone surrogate escape (\\ud800-\\udfff): not valid Unicode", name, lineno,
                     fix="escape characters outside the BMP as a full surrogate pair, or write them as UTF-8")


def _too_large(name: str, lineno: int, limit: int) -> Issue:
    return Issue("record_too_large", f"line is longer than {limit} bytes", name, lineno, fix="split the record or raise max_record_bytes")


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
        yield RawRecord(name, lineno, issues=issues + [bad], raw=text.rstrip("\n")) if bad else RawRecord(name, lineno, value, issues)


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
            if text[_skip_ws(text, end):]:
                raise json.JSONDecodeError("extra data after the JSON value", text, _skip_ws(text, end))
            bad = _surrogate_issue(text, value, name, 1)
            yield RawRecord(name, 1, issues=issues + [bad]) if bad else RawRecord(name, 1, value, issues)
        except (json.JSONDecodeError, RecursionError) as exc:
            yield RawRecord(name, _line_of(text, getattr(exc, "pos", 0)), issues=issues + [_json_issue(exc, text, name)], raw=text[:200])
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
            yield RawRecord(name, line, issues=issues + [_json_issue(exc, text, name)], raw=text[pos:pos + 200])
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
        return Issue("invalid_json", f"{exc.msg} (column {exc.colno})", name, _line_of(text, exc.pos), fix="fix the JSON syntax (truncated file?)")
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
            yield RawRecord(name, reader.line_num + 1, issues=[Issue("encoding", f"invalid UTF-8 ({exc.reason})", name, reader.line_num + 1, fix=_ENCODING_FIX)])
        except csv.Error as exc:
            yield RawRecord(name, reader.line_num, issues=[Issue("invalid_json", f"broken CSV: {exc}", name, reader.line_num, fix="quote fields that contain the delimiter or newlines")])


def _csv_record(row: dict, name: str, lineno: int) -> RawRecord:
    if None in row:  # more cells than header columns
        return RawRecord(name, lineno, issues=[Issue("wrong_type", "row has more cells than the header", name, lineno, fix="quote fields that contain commas")], raw=str(row))
    value: dict[str, Any] = {}
    for key, cell in row.items():
        if key in _NESTED_COLUMNS and cell and cell.lstrip()[:1] in "[{":
            try:
                cell = json.loads(cell)
            except json.JSONDecodeError as exc:
                return RawRecord(name, lineno, issues=[Issue("invalid_json", f"column '{key}' is not valid JSON ({exc.msg})", name, lineno, key)], raw=str(row))
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
        yield RawRecord(name, None, issues=[Issue("unreadable_file", f"not a readable Parquet file ({exc})", name, fix="re-export the file")])


def _iter_text(path: Path, limit: int) -> Iterator[RawRecord]:
    """Paragraphs (separated by blank lines) as {"text": ...}, located at their first line."""
    name = str(path)
    para: list[str] = []
    pending: list[Issue] = []  # a BOM warning rides on the first paragraph
    start = size = 0
    for lineno, raw in _read_lines(path, limit):
        text = None if raw is None else _decode(raw, name, lineno, pending)
        if text is None:
            yield RawRecord(name, lineno, issues=[i for i in pending if i.kind != "bom"] or [_too_large(name, lineno, limit)])
            pending = [i for i in pending if i.kind == "bom"]
            continue
        if text.strip():
            start = start or lineno
            para.append(text)
            size += len(text)
        if (not text.strip() or size > limit) and para:
            yield RawRecord(name, start, {"text": "".join(para).strip("\n")}, pending)
            para, pending, start, size = [], [], 0, 0
    if para or pending:
        yield RawRecord(name, start or 1, {"text": "".join(para).strip("\n")} if para else NOTHING, pending)
