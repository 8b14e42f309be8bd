"""Readers: files of any supported format -> in-memory examples (see data/types.py).

This first version reads OpenAI chat JSONL and raw text; every problem is reported with
file and line, all at once.
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.data.types import ROLES, Conversation, Example, Message, TextExample
from tuneforge.errors import DataError, Problem


def read_examples(path: str | Path, format: str = "auto") -> list[Example]:
    """Read every example of `path`; raise DataError listing every bad line."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}", [Problem(str(path), "no such file", "check the path in the config's data section")])
    if format == "auto":
        format = "text" if path.suffix in (".txt", ".md") else "chat"
    if format == "text":
        return [TextExample(text=t) for t in path.read_text(encoding="utf-8").split("\n\n") if t.strip()]
    return _read_chat_jsonl(path)


def _read_chat_jsonl(path: Path) -> list[Example]:
    examples: list[Example] = []
    problems: list[Problem] = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                problems.append(Problem(where, f"not valid UTF-8 JSON ({exc})", "each line must be one JSON object"))
                continue
            conv = _conversation(record, where, problems)
            if conv is not None:
                conv.metadata.setdefault("source_line", lineno)
                examples.append(conv)
    if problems:
        raise DataError(f"{path}: {len(problems)} invalid record(s)", problems)
    return examples


def _conversation(record: object, where: str, problems: list[Problem]) -> Conversation | None:
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
        problems.append(Problem(where, "expected an object with a 'messages' list", 'write {"messages": [{"role": ..., "content": ...}]}'))
        return None
    messages = []
    ok = True
    for i, m in enumerate(record["messages"]):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            problems.append(Problem(f"{where}: messages[{i}]", "needs 'role' (system/user/assistant/tool) and string 'content'"))
            ok = False
            continue
        messages.append(Message(m["role"], m["content"], m.get("weight")))
    if ok and not any(m.role == "assistant" for m in messages):
        problems.append(Problem(where, "no assistant message", "add the answer the model should learn"))
        ok = False
    metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
    return Conversation(messages, dict(metadata)) if ok else None


def write_jsonl(examples: list[Example], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n")
