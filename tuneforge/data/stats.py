"""Streaming statistics of a dataset: one pass, bounded memory.

Cheap per-example numbers (messages, characters, labels, content hash, charset) are kept
for every example as small arrays; tokenization, the expensive part, runs on a seeded
reservoir sample of `sample` examples (all of them when the file is smaller), so totals
over a sample are estimates and say so.
"""

from __future__ import annotations

import random
import re
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tuneforge.data.clean import texts_of
from tuneforge.data.hashing import content_hash
from tuneforge.data.types import Conversation, Example, LabelledAnswer, LabelledExample, PreferencePair, TokenExample

# Scripts by code-point range (first match); enough to spot a file that mixes languages.
_SCRIPTS = [
    (0x0000, 0x024F, "Latin"),
    (0x0370, 0x03FF, "Greek"),
    (0x0400, 0x04FF, "Cyrillic"),
    (0x0590, 0x05FF, "Hebrew"),
    (0x0600, 0x06FF, "Arabic"),
    (0x0900, 0x097F, "Devanagari"),
    (0x0E00, 0x0E7F, "Thai"),
    (0x3040, 0x30FF, "Japanese kana"),
    (0x4E00, 0x9FFF, "CJK"),
    (0xAC00, 0xD7AF, "Hangul"),
]
_MOJIBAKE = re.compile("[ÃÂâ][\u0080-\u00bf\u2018-\u201e\u20ac\u2122]")  # UTF-8 read as Latin-1/CP1252: "Ã©", "â€™"
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def dominant_script(text: str) -> str:
    counts: Counter = Counter()
    for ch in text:
        if ch.isalpha():
            cp = ord(ch)
            counts[next((name for lo, hi, name in _SCRIPTS if lo <= cp <= hi), "Other")] += 1
    return counts.most_common(1)[0][0] if counts else "None"


def charset_anomalies(text: str) -> list[str]:
    found = []
    if "\ufffd" in text:
        found.append("replacement_char")
    if _MOJIBAKE.search(text):
        found.append("mojibake")
    if _CONTROL.search(text):
        found.append("control_char")
    return found


@dataclass
class DataStats:
    sample: int = 5000
    seed: int = 0
    examples: int = 0
    invalid: int = 0
    kinds: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)
    scripts: Counter = field(default_factory=Counter)
    anomalies: Counter = field(default_factory=Counter)
    anomaly_lines: dict[str, list] = field(default_factory=dict)
    script_lines: dict[str, list] = field(default_factory=dict)
    messages: array = field(default_factory=lambda: array("l"))
    chars: array = field(default_factory=lambda: array("l"))
    lines: array = field(default_factory=lambda: array("l"))
    hashes: array = field(default_factory=lambda: array("q"))
    reservoir: list[tuple[int, Example]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def add(self, example: Example, line: int | None) -> None:
        i = self.examples
        self.examples += 1
        self.kinds[type(example).__name__] += 1
        texts = texts_of(example)
        prompted = isinstance(example, (PreferencePair, LabelledAnswer))  # a prompt and one answer (per side)
        self.messages.append(
            len(example.messages) if isinstance(example, Conversation) else len(example.prompt) + 1 if prompted else 1
        )
        self.chars.append(sum(len(t) for t in texts))
        self.lines.append(line or 0)
        self.hashes.append(content_hash(example))
        if isinstance(example, LabelledExample):
            self.labels[example.label] += 1
        elif isinstance(example, TokenExample):
            self.labels.update(t for t in example.tags if t != "O")
        elif isinstance(example, LabelledAnswer):  # KTO's balance (one side only leaves nothing to contrast)
            self.labels["desirable" if example.desirable else "undesirable"] += 1
        self._charset(" ".join(texts), line)
        if len(self.reservoir) < self.sample:  # reservoir sampling (Algorithm R)
            self.reservoir.append((i, example))
        else:
            j = self._rng.randrange(self.examples)
            if j < self.sample:
                self.reservoir[j] = (i, example)

    def _charset(self, text: str, line: int | None) -> None:
        script = dominant_script(text[:2000])
        self.scripts[script] += 1
        self.script_lines.setdefault(script, [])
        if len(self.script_lines[script]) < 20:
            self.script_lines[script].append(line)
        for kind in charset_anomalies(text):
            self.anomalies[kind] += 1
            self.anomaly_lines.setdefault(kind, [])
            if len(self.anomaly_lines[kind]) < 20:
                self.anomaly_lines[kind].append(line)

    def duplicates(self) -> int:
        h = np.frombuffer(self.hashes, dtype=np.int64)
        return int(len(h) - len(np.unique(h)))

    def summary(self) -> dict[str, Any]:
        msgs, chars = np.frombuffer(self.messages, dtype=np.int64), np.frombuffer(self.chars, dtype=np.int64)
        main_script = self.scripts.most_common(1)[0][0] if self.scripts else None
        return {
            "examples": self.examples,
            "invalid": self.invalid,
            "kinds": dict(self.kinds),
            "messages_per_example": describe(msgs),
            "chars_per_example": describe(chars),
            "labels": dict(self.labels.most_common()),
            "duplicates": self.duplicates(),
            "length_outliers": self.outliers(chars),
            "charset": {
                "scripts": dict(self.scripts),
                "anomalies": dict(self.anomalies),
                "anomaly_lines": self.anomaly_lines,
                "other_script_lines": {s: ls for s, ls in self.script_lines.items() if s != main_script},
            },
        }

    def outliers(self, chars: np.ndarray) -> dict[str, Any]:
        """Examples far outside the length distribution (Tukey's fences, k=3, on characters)."""
        if len(chars) < 4:
            return {"count": 0, "lines": []}
        q1, q3 = np.percentile(chars, [25, 75])
        lo, hi = q1 - 3 * (q3 - q1), q3 + 3 * (q3 - q1)
        idx = np.flatnonzero((chars < lo) | (chars > hi))
        lines = np.frombuffer(self.lines, dtype=np.int64)
        return {"count": int(len(idx)), "low": float(lo), "high": float(hi), "lines": [int(x) for x in lines[idx[:20]]]}


def describe(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {"mean": 0.0, "min": 0, "p50": 0, "p95": 0, "max": 0}
    p50, p95 = np.percentile(values, [50, 95])
    return {
        "mean": round(float(values.mean()), 2),
        "min": int(values.min()),
        "p50": float(p50),
        "p95": float(p95),
        "max": int(values.max()),
    }
