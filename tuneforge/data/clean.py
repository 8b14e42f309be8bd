"""Cleaning that preserves meaning by default: Unicode NFC, CRLF -> LF, invisible control characters,
trailing spaces at line ends. Opt-in: NFKC (turns full-width CJK punctuation and `²` into ASCII), collapsing
whitespace (breaks code indentation), HTML stripping and PII redaction. Every step counts the texts it
changed and keeps a sample of before/after snippets (`Cleaner.diffs`, written by prepare).
"""

from __future__ import annotations

import dataclasses
import functools
import html
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from html.parser import HTMLParser

from tuneforge.data.types import (
    Conversation,
    Example,
    LabelledAnswer,
    LabelledExample,
    Message,
    PreferencePair,
    PromptExample,
    TextExample,
    TokenExample,
)

# Kept format characters carry meaning: ZWJ (emoji sequences), ZWNJ (Persian, Indic spelling), the bidi marks
# LRM/RLM/ALM (right-to-left text), and the tag characters of subdivision flags (England, Scotland).
_KEEP_CONTROL = {"\n", "\t", "\r", "\u200c", "\u200d", "\u200e", "\u200f", "\u061c", *map(chr, range(0xE0020, 0xE0080))}
WHITESPACE_MODES = ("keep", "line_ends", "collapse")
DIFF_CONTEXT = 40  # characters of context on each side of a change in a diff sample
_INLINE_SPACE = re.compile(r"[^\S\n]+")
# Anything the whitespace step would change; most texts have none, and skip the per-line work.
_WS_TO_FIX = re.compile(r"[^\S\n]{2}|[^\S \n]|[^\S\n]\n|\n[^\S\n]|\n{3}|^\s|\s$")
_ASCII_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LINE_END_SPACE = re.compile(r"[ \t]+(?=\n|$)")
_MANY_NEWLINES = re.compile(r"\n{3,}")
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
# 9-15 digits, optionally +country, with the usual separators; dates and short numbers do not match.
# Not part of a longer digit run (a non-Luhn 16-digit number is not a phone number).
_PHONE = re.compile(r"(?<![\w+])(?<!\d[ .-])\+?\d(?:[ .()-]{0,2}\d){8,14}(?!\w|[ .()-]{1,2}\d)")
_DATE = re.compile(r"\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}")
PII_KINDS = ("email", "phone", "card")


@functools.cache
def _control_chars() -> re.Pattern:
    """Every Cc/Cf code point except the kept ones, as one character class (built once, ~0.2 s)."""
    chars = [
        chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) in ("Cc", "Cf") and chr(c) not in _KEEP_CONTROL
    ]
    return re.compile("[" + "".join(re.escape(c) for c in chars) + "]")


def map_texts(example: Example, fn: Callable[[str], str], roles: tuple[str, ...] | None = None) -> Example:
    """A copy of `example` with `fn` applied to each text field (messages of `roles` only, if given)."""

    def msgs(ms: list[Message]) -> list[Message]:
        # a tool-calling message without text has no text field (its calls are JSON, never cleaned)
        return [
            dataclasses.replace(m, content=fn(m.content))
            if (roles is None or m.role in roles) and (m.content or not m.tool_calls)
            else m
            for m in ms
        ]

    meta = dict(example.metadata)
    if isinstance(example, Conversation):  # its tools, tool calls and source kept
        return dataclasses.replace(example, messages=msgs(example.messages), metadata=meta)
    if isinstance(example, PreferencePair):
        answers = (
            (fn(example.chosen), fn(example.rejected))
            if roles is None or "assistant" in roles
            else (example.chosen, example.rejected)
        )
        return PreferencePair(msgs(example.prompt), *answers, meta)
    if isinstance(example, LabelledAnswer):
        answer = fn(example.completion) if roles is None or "assistant" in roles else example.completion
        return LabelledAnswer(msgs(example.prompt), answer, example.desirable, meta)
    if isinstance(example, LabelledExample):
        return LabelledExample(fn(example.text), example.label, meta)
    if isinstance(example, TextExample):
        return TextExample(fn(example.text), meta)
    if isinstance(example, TokenExample):
        return TokenExample([fn(t) for t in example.tokens], list(example.tags), meta)
    if isinstance(example, PromptExample):  # an RFT prompt: the grader's fields are references, never cleaned
        return dataclasses.replace(example, prompt=msgs(example.prompt), metadata=meta)
    raise TypeError(f"not an example: {type(example).__name__}")


def texts_of(example: Example) -> list[str]:
    seen: list[str] = []
    map_texts(example, lambda t: seen.append(t) or t)
    return seen


class _TextOnly(HTMLParser):
    """Collects the text of an HTML fragment, skipping <script> and <style>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self._skip += tag in ("script", "style")
        if tag in ("br", "p", "div", "li", "tr", "h1", "h2", "h3"):
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        self._skip -= tag in ("script", "style") and self._skip > 0

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def strip_html(text: str) -> str:
    if "<" not in text and "&" not in text:
        return text
    parser = _TextOnly()
    parser.feed(text)
    parser.close()
    return html.unescape("".join(parser.parts))


def _luhn(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def redact_pii(text: str, counts: Counter, kinds: tuple[str, ...] = PII_KINDS) -> str:
    """Replace PII with [EMAIL] / [PHONE] / [CARD]; cards must pass the Luhn check."""

    def card(m: re.Match) -> str:
        digits = re.sub(r"\D", "", m.group())
        if not _luhn(digits):
            return m.group()
        counts["card"] += 1
        return "[CARD]"

    def sub(kind: str, pattern: re.Pattern, token: str, t: str) -> str:
        t, n = pattern.subn(token, t)
        counts[kind] += n
        return t

    if "card" in kinds:
        text = _CARD.sub(card, text)
    if "email" in kinds and "@" in text:
        text = sub("email", _EMAIL, "[EMAIL]", text)

    def phone(m: re.Match) -> str:
        if _DATE.search(m.group()):  # "2024-01-02 12" is a date and an hour
            return m.group()
        counts["phone"] += 1
        return "[PHONE]"

    if "phone" in kinds:
        text = _PHONE.sub(phone, text)
    return text


def collapse_whitespace(text: str) -> str:
    """Runs of spaces to one, lines trimmed, at most one blank line (opt-in: destroys code indentation)."""
    if not _WS_TO_FIX.search(text):
        return text
    return _MANY_NEWLINES.sub(
        "\n\n", "\n".join(_INLINE_SPACE.sub(" ", line).strip() for line in text.split("\n"))
    ).strip()


def diff_snippet(before: str, after: str, context: int = DIFF_CONTEXT) -> dict:
    """The changed region of a text with `context` characters around it (offset into `before`)."""
    start = 0
    while start < min(len(before), len(after)) and before[start] == after[start]:
        start += 1
    end = 0
    while end < min(len(before), len(after)) - start and before[-1 - end] == after[-1 - end]:
        end += 1
    lo = max(0, start - context)
    return {
        "at": start,
        "before": before[lo : len(before) - end + context],
        "after": after[lo : len(after) - end + context],
    }


@dataclasses.dataclass
class Cleaner:
    """Text cleaning with the options of `PrepareConfig.clean`; counts what each step changed.

    counts: per step the texts it changed (`unicode_nfc`, `line_endings`, `control_chars`, `whitespace`,
    `html_stripped`, `pii`), plus `control_chars_removed` (characters), PII kinds and `texts_changed`.
    diffs: up to `diff_samples` before/after snippets per step, located by `where` (file, line).
    """

    nfkc: bool = False
    control_chars: bool = True
    whitespace: str = "line_ends"
    html: bool = False
    pii: tuple[str, ...] = ()
    nfc: bool = True
    line_endings: bool = True
    diff_samples: int = 20
    counts: Counter = dataclasses.field(default_factory=Counter)
    diffs: list[dict] = dataclasses.field(default_factory=list)
    where: tuple[str, int | None] = ("", None)

    def __post_init__(self) -> None:
        if self.whitespace not in WHITESPACE_MODES:
            raise ValueError(f"whitespace must be one of {', '.join(WHITESPACE_MODES)}, got {self.whitespace!r}")

    def _step(self, name: str, text: str, new: str) -> str:
        if new != text:
            self.counts[name] += 1
            if self.counts[name] <= self.diff_samples:
                self.diffs.append(
                    {"step": name, "file": self.where[0], "line": self.where[1], **diff_snippet(text, new)}
                )
        return new

    def text(self, text: str) -> str:
        original = text
        if self.html:
            text = self._step("html_stripped", text, strip_html(text))
        if (self.nfkc or self.nfc) and not text.isascii():  # ASCII is already normalised
            form = "NFKC" if self.nfkc else "NFC"
            text = self._step(f"unicode_{form.lower()}", text, unicodedata.normalize(form, text))
        if self.line_endings and "\r" in text:
            text = self._step("line_endings", text, text.replace("\r\n", "\n").replace("\r", "\n"))
        if self.control_chars:
            new, n = (_ASCII_CONTROL if text.isascii() else _control_chars()).subn("", text)
            self.counts["control_chars_removed"] += n
            text = self._step("control_chars", text, new)
        if self.whitespace == "line_ends":
            text = self._step("whitespace", text, _LINE_END_SPACE.sub("", text))
        elif self.whitespace == "collapse":
            text = self._step("whitespace", text, collapse_whitespace(text))
        if self.pii:
            text = self._step("pii", text, redact_pii(text, self.counts, self.pii))
        self.counts["texts_changed"] += text != original
        return text

    def example(self, example: Example, file: str = "", line: int | None = None) -> Example:
        self.where = (file, line)
        return map_texts(example, self.text)
