"""Column mappings: read another tool's field names (and nested paths) as ours.

`--map prompt=data.question,completion=data.answer` (or `data.mapping: {prompt: data.question}` in a run
or prepare config) reads `record["data"]["question"]` as `prompt`. A path is dot-separated; a segment that is
a number indexes a list (`text=pages.0.body`); a key that itself contains dots is found as written first.
What a mapping reads is moved, not copied: the rest of a nested object stays in the record (and is reported
as an unused field like any other), so nothing is trained twice and nothing disappears unnamed.
"""

from __future__ import annotations

import copy
from typing import Any

from tuneforge.errors import DataError, Problem

_MISSING = object()


def parse_mapping(spec: str | dict[str, str] | None, where: str = "--map") -> dict[str, str]:
    """`text=body,label=meta.stars` -> {"text": "body", "label": "meta.stars"} (ours=theirs)."""
    if not spec:
        return {}
    if isinstance(spec, dict):
        pairs = [[str(k), v] for k, v in spec.items()]
    else:
        pairs = [p.split("=", 1) for p in spec.split(",") if p.strip()]
    problems = []
    for p in pairs:
        ok = len(p) == 2 and isinstance(p[1], str) and p[0].strip() and p[1].strip() and "" not in p[1].split(".")
        if not ok:
            problems.append(Problem(where, f"'{'='.join(map(str, p))}' is not ours=theirs", _EXAMPLE))
    ours = [p[0].strip() for p in pairs if len(p) == 2]
    for name in sorted({o for o in ours if ours.count(o) > 1}):
        problems.append(Problem(where, f"'{name}' is mapped twice", "map each of our fields from one column"))
    if problems:
        raise DataError("invalid column mapping", problems)
    return {k.strip(): v.strip() for k, v in pairs}


_EXAMPLE = "e.g. --map text=body,label=stars or a nested path: --map prompt=data.question"


def apply_mapping(record: Any, mapping: dict[str, str]) -> Any:
    """Rename user columns to ours: {"prompt": "data.question"} reads record["data"]["question"] as prompt.

    A path that the record does not have maps nothing (the format then reports the field it misses)."""
    if not mapping or not isinstance(record, dict):
        return record
    out = copy.deepcopy(record)
    found = {}
    for ours, theirs in mapping.items():
        value = _take(out, theirs)
        if value is not _MISSING:
            found[ours] = value
    out.update(found)
    return out


def _take(record: dict, path: str) -> Any:
    """Remove and return the value at `path` (containers left empty are removed too); _MISSING if absent."""
    if path in record:  # a flat column, or a key with dots in its name
        return record.pop(path)
    parts = path.split(".")
    chain = [record]
    for part in parts[:-1]:
        node = _child(chain[-1], part)
        if node is _MISSING or not isinstance(node, (dict, list)):
            return _MISSING
        chain.append(node)
    parent, last = chain[-1], parts[-1]
    value = _child(parent, last)
    if value is _MISSING:
        return _MISSING
    if isinstance(parent, dict):
        del parent[last]
    else:
        parent[int(last)] = None  # a list keeps its positions (later paths index the same items)
    for node, part in zip(reversed(chain[:-1]), reversed(parts[:-1])):  # drop what is now empty
        child = _child(node, part)
        if isinstance(child, dict) and not child or isinstance(child, list) and all(v is None for v in child):
            if isinstance(node, dict):
                del node[part]
    return value


def _child(node: Any, part: str) -> Any:
    if isinstance(node, dict):
        return node.get(part, _MISSING)
    if isinstance(node, list) and part.lstrip("-").isdigit():
        i = int(part)
        return node[i] if -len(node) <= i < len(node) else _MISSING
    return _MISSING
