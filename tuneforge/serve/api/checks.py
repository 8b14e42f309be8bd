"""Checks every request body gets before its fields are used: text that cannot be encoded.

JSON allows a lone UTF-16 surrogate ("\\ud800"); Python decodes it into a str that no encoder
accepts, so it would fail deep in the tokenizer or the database as a 500. It is refused here,
naming the field, as a 400.
"""

from __future__ import annotations

from typing import Any

from tuneforge.serve.api.errors import APIError


def _where(path: list[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def refuse_unencodable(value: Any, path: list[str | int] | None = None) -> Any:
    """Raise a 400 naming the first string (or key) of `value` that is not valid Unicode text; return `value`."""
    path = path or []
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            where = _where(path) or "body"
            raise APIError(
                400,
                f"{where}: the text holds a lone UTF-16 surrogate (not valid Unicode); send valid UTF-8 text.",
                param=where,
                code="invalid_text",
            ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            refuse_unencodable(key, path)
            refuse_unencodable(item, [*path, str(key)])
    elif isinstance(value, list):
        for i, item in enumerate(value):
            refuse_unencodable(item, [*path, i])
    return value
