"""User-facing errors.

A `TuneforgeError` is a mistake the user can fix (bad config, bad file, missing model):
the CLI prints it without a traceback. Each problem names where it is (file:line, config
key) and what to do. Collect every problem of one input before raising.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Problem:
    where: str  # "config.yaml: train.lr", "data.jsonl:12: messages[1].role"
    message: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        return f"{text} ({self.fix})" if self.fix else text


@dataclass
class TuneforgeError(Exception):
    """An error caused by user input; carries one or more located problems."""

    summary: str
    problems: list[Problem] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.summary)

    def __str__(self) -> str:
        if not self.problems:
            return self.summary
        lines = [self.summary] + [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class ConfigError(TuneforgeError):
    """The run configuration is invalid."""


class DataError(TuneforgeError):
    """An input data file is unreadable or invalid."""


class ModelLoadError(TuneforgeError):
    """A base model, run or adapter could not be found or loaded."""


class TrainingError(TuneforgeError):
    """Training cannot continue (for example the loss became NaN)."""
