"""Text augmentation for small training sets (EDA, Wei & Zou 2019): synonym replacement,
random swap, random deletion. Applied to training examples only (`prepare` never passes it
validation or test), to the input side only (user messages, the text of classification
and raw-text examples): rewriting the answers would teach the model worse answers.
Augmented copies carry `metadata.augmented` for the lineage.
"""

from __future__ import annotations

import random
from pathlib import Path

import yaml

from tuneforge.data.clean import map_texts
from tuneforge.data.types import Conversation, Example, LabelledAnswer, LabelledExample, PreferencePair, TextExample
from tuneforge.errors import DataError, Problem

OPS = ("synonym", "swap", "delete")
# A small general-English table used when the user gives none; domain tables work far better.
DEFAULT_SYNONYMS: dict[str, list[str]] = {
    "big": ["large", "huge"],
    "small": ["little", "tiny"],
    "quick": ["fast", "rapid"],
    "fast": ["quick", "rapid"],
    "help": ["assist", "support"],
    "buy": ["purchase"],
    "problem": ["issue", "trouble"],
    "issue": ["problem"],
    "error": ["fault", "failure"],
    "start": ["begin"],
    "begin": ["start"],
    "end": ["finish"],
    "show": ["display"],
    "get": ["obtain", "receive"],
    "need": ["require"],
    "want": ["wish", "would like"],
    "change": ["modify", "alter"],
    "fix": ["repair", "resolve"],
    "broken": ["faulty", "damaged"],
    "good": ["fine", "great"],
    "bad": ["poor", "awful"],
    "happy": ["glad", "pleased"],
    "sad": ["unhappy"],
    "answer": ["reply", "response"],
    "ask": ["inquire"],
    "order": ["purchase"],
    "account": ["profile"],
    "password": ["passcode"],
    "delete": ["remove"],
    "remove": ["delete"],
}


def load_synonyms(path: Path | None) -> dict[str, list[str]]:
    """A YAML or JSON mapping word -> [synonyms]; the small built-in table when path is None."""
    if path is None:
        return DEFAULT_SYNONYMS
    try:
        table = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DataError(
            f"cannot read synonym table {path}",
            [Problem(str(path), str(exc).splitlines()[0], "write a YAML/JSON mapping word: [synonym, ...]")],
        ) from None
    bad = (
        [k for k, v in (table or {}).items() if not isinstance(v, list)] if isinstance(table, dict) else ["(top level)"]
    )
    if bad:
        raise DataError(
            f"invalid synonym table {path}", [Problem(f"{path}: {k}", "expected a list of synonyms") for k in bad[:20]]
        )
    return {str(k).lower(): [str(s) for s in v] for k, v in table.items()}


class Augmenter:
    def __init__(self, ops: tuple[str, ...], p: float, seed: int, synonyms: dict[str, list[str]]) -> None:
        self.ops, self.p, self.synonyms = ops, p, synonyms
        self.rng = random.Random(seed)

    def text(self, text: str, op: str) -> str:
        words = text.split()
        if len(words) < 2:
            return text
        n = max(1, int(round(self.p * len(words))))
        if op == "synonym":
            slots = [i for i, w in enumerate(words) if w.lower() in self.synonyms]
            for i in self.rng.sample(slots, min(n, len(slots))):
                words[i] = self.rng.choice(self.synonyms[words[i].lower()])
        elif op == "swap":
            for _ in range(n):
                i, j = self.rng.sample(range(len(words)), 2)
                words[i], words[j] = words[j], words[i]
        elif op == "delete":
            kept = [w for w in words if self.rng.random() >= self.p]
            words = kept or [self.rng.choice(words)]
        return " ".join(words)

    def example(self, example: Example) -> Example | None:
        """One augmented copy (a random op), or None for types it does not apply to (tokens)."""
        op = self.rng.choice(self.ops)
        if isinstance(example, (Conversation, PreferencePair, LabelledAnswer)):
            out = map_texts(example, lambda t: self.text(t, op), roles=("user",))
        elif isinstance(example, (TextExample, LabelledExample)):
            out = map_texts(example, lambda t: self.text(t, op))
        else:
            return None  # NER tokens: changing words would misalign the tags
        out.metadata["augmented"] = op
        return out
