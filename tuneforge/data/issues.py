"""One problem found in a data file: where it is (file, line, field path), what kind, how bad.

Readers, the validator and `prepare` all speak in `Issue`s; `readers.read_examples` turns
the errors into a `DataError` of `Problem`s for the CLI and the training recipe.

Kinds (errors unless noted):
  binary_file, encoding, bom (warning), invalid_json, record_too_large, not_object,
  unknown_format, mixed_format, missing_field, wrong_type, empty_content, missing_role,
  unknown_role, no_assistant, no_trainable, invalid_weight, unknown_key (warning),
  tags_mismatch, invalid_tag, bio_sequence (warning), label_not_in_set, identical_pair
  (warning), too_long, too_few_examples, empty_file, duplicate (warning), short_answer
  (warning), label_imbalance (warning), unreadable_file, skipped_files (warning), long_paragraph (warning),
  split_at_limit (warning), kto_unsupported, multimodal_unsupported, format_conflict, no_prompt, not_one_answer,
  duplicate_system, chat_template (the model's chat template refuses the record or its assistant tokens
  cannot be located), system_prompt_dropped (warning), invalid_tools, invalid_arguments, unknown_tool,
  orphan_tool_result, unanswered_tool_call, parallel_tool_calls (tool calling: `data.tool_calls`),
  tools_unsupported (tool calls in preference or KTO data).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from tuneforge.errors import Problem

Severity = Literal["error", "warning"]

WARNING_KINDS = frozenset(
    {
        "bom",
        "unknown_key",
        "bio_sequence",
        "identical_pair",
        "duplicate",
        "short_answer",
        "label_imbalance",
        "skipped_files",
        "long_paragraph",
        "split_at_limit",
        "system_prompt_dropped",
        "system_overridden",
        "over_max_length",
    }
)


@dataclass(frozen=True)
class Issue:
    kind: str
    message: str
    file: str = ""
    line: int | None = None  # 1-based line (JSONL, CSV, text) or the line an array item starts on (JSON)
    field: str = ""  # path inside the record: "messages[1].role"
    fix: str = ""

    @property
    def severity(self) -> Severity:
        return "warning" if self.kind in WARNING_KINDS else "error"

    @property
    def where(self) -> str:
        loc = self.file + (f":{self.line}" if self.line is not None else "")
        return f"{loc}: {self.field}" if self.field else loc

    def to_dict(self) -> dict:
        return {**asdict(self), "severity": self.severity}

    def to_problem(self) -> Problem:
        return Problem(self.where, f"[{self.kind}] {self.message}", self.fix)


def located(issues: list[Issue], file: str, line: int | None) -> list[Issue]:
    """Stamp the record's file and line on issues found inside it (formats know only fields)."""
    return [Issue(i.kind, i.message, file, line, i.field, i.fix) for i in issues]
