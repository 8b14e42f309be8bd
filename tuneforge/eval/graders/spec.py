"""Grader configs (`eval.graders: [...]`), in OpenAI's grader JSON shapes plus `regex` and `json_match`.

Each grader scores one (sample, item) pair: the model's answer and the test example. Every
field is checked with the whole config (templates, regex, formula), so a bad grader is a
located ConfigError before any model is loaded.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from tuneforge.eval.graders.formula import parse_formula
from tuneforge.eval.graders.templates import template_problems

Family = Literal["facts", "style"]
OUTPUT = "{{sample.output_text}}"
SIMILARITY_METRICS = (
    "fuzzy_match",
    "bleu",
    "token_f1",
    "exact_match",
    "rouge_1",
    "rouge_2",
    "rouge_3",
    "rouge_4",
    "rouge_5",
    "rouge_l",
)
_NOT_YET = ("gleu", "meteor", "cosine")  # OpenAI's, not implemented here: refused by name


def _check_template(value: str) -> str:
    problems = template_problems(value)
    if problems:
        raise ValueError("; ".join(problems))
    return value


class _Grader(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(
        "",
        description="The grader's name: its column in eval.json, the table and the report "
        "(required, except inside multi, where the key names it).",
    )
    family: Family | None = Field(
        None,
        description="Metric family the verdict ranks it in: facts (is the answer right?) or style "
        "(does it read like the reference?). Default: style for text_similarity, else facts.",
    )

    @property
    def metric_family(self) -> str:
        return self.family or "facts"


class StringCheck(_Grader):
    """1 when `input` and `reference` compare as `operation` says, else 0."""

    type: Literal["string_check"] = "string_check"
    input: str = Field(OUTPUT, description="Template of the text checked, e.g. {{sample.output_text}}.")
    reference: str = Field(..., description="Template of the text compared with, e.g. {{item.fact}}.")
    operation: Literal["eq", "ne", "like", "ilike", "not_like", "not_ilike"] = Field(
        ...,
        description="eq / ne: equal / not equal; like: input contains reference; ilike: the same ignoring case; "
        "not_like / not_ilike: input does not contain it (tuneforge's additions).",
    )
    _templates = field_validator("input", "reference")(_check_template)


class Regex(_Grader):
    """1 when `pattern` matches somewhere in `input` (re.search), else 0."""

    type: Literal["regex"] = "regex"
    input: str = Field(OUTPUT, description="Template of the text searched.")
    pattern: str = Field(..., description="Python regular expression, e.g. '\\$\\d+'.")
    ignore_case: bool = Field(False, description="Match regardless of case.")
    _templates = field_validator("input")(_check_template)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value


class JsonMatch(_Grader):
    """Parsed JSON of `input` equal to `reference`'s (1/0), or the share of `fields` that are equal."""

    type: Literal["json_match"] = "json_match"
    input: str = Field(
        "{{sample.output_json}}", description="Template of the JSON produced (text is parsed; invalid JSON scores 0)."
    )
    reference: str = Field(..., description="Template of the expected JSON, e.g. {{item.expected}}.")
    fields: list[str] | None = Field(
        None,
        description="Dotted paths compared (a.b.c); the score is the share that match. All of the JSON when absent.",
    )
    _templates = field_validator("input", "reference")(_check_template)


class TextSimilarity(_Grader):
    """Similarity of `input` to `reference` in [0, 1]."""

    type: Literal["text_similarity"] = "text_similarity"
    input: str = Field(OUTPUT, description="Template of the text scored.")
    reference: str = Field(..., description="Template of the reference text.")
    evaluation_metric: str = Field(..., description=f"One of {', '.join(SIMILARITY_METRICS)} (BLEU scaled to 0-1).")
    _templates = field_validator("input", "reference")(_check_template)

    @field_validator("evaluation_metric")
    @classmethod
    def _known(cls, value: str) -> str:
        if value in _NOT_YET:
            raise ValueError(f"'{value}' is not supported yet: use one of {', '.join(SIMILARITY_METRICS)}")
        if value not in SIMILARITY_METRICS:
            raise ValueError(f"unknown evaluation_metric '{value}': use one of {', '.join(SIMILARITY_METRICS)}")
        return value

    @property
    def metric_family(self) -> str:
        return self.family or "style"


class Python(_Grader):
    """`grade(sample, item) -> float` from `source` or a `file`; an item whose call raises scores 0 and is counted."""

    type: Literal["python"] = "python"
    source: str | None = Field(
        None, description="Python source defining grade(sample, item) -> float (sample and item are dicts)."
    )
    file: Path | None = Field(None, description="A .py file defining grade(sample, item) -> float (instead of source).")

    @model_validator(mode="after")
    def _one_source(self) -> Python:
        if (self.source is None) == (self.file is None):
            raise ValueError("give exactly one of source (the code) or file (a .py path)")
        return self


class JudgeMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"] = "user"
    content: str = Field(..., description="Template of the message, e.g. 'Answer: {{sample.output_text}}'.")
    _templates = field_validator("content")(_check_template)


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(0.0, ge=0, description="Judge sampling temperature (0: greedy, repeatable).")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling for the judge.")
    max_completions_tokens: int = Field(32, gt=0, description="Longest judge reply in tokens.")
    seed: int | None = Field(None, description="Seed passed to the judge.")


class ScoreModel(_Grader):
    """A judge model on any OpenAI-compatible endpoint replies with a number in `range`; scaled to [0, 1]."""

    type: Literal["score_model"] = "score_model"
    model: str = Field(
        ..., description="Judge model id at the endpoint (tuneforge serve: 'demo' or a fine-tuned model id)."
    )
    input: list[JudgeMessage] = Field(
        ..., min_length=1, description="The judge's messages (templates), with the rubric."
    )
    range: tuple[float, float] = Field(
        (0.0, 1.0), description="[low, high] of the judge's score; the grade is (score - low) / (high - low)."
    )
    sampling_params: SamplingParams = Field(default_factory=SamplingParams)
    base_url: str | None = Field(
        None,
        description="The endpoint, e.g. http://127.0.0.1:8000/v1; the OpenAI client's default "
        "(OPENAI_BASE_URL or api.openai.com) when absent.",
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="Environment variable holding the endpoint's key (never the key itself)."
    )
    timeout: float = Field(60.0, gt=0, description="Seconds to wait for one judge reply.")
    concurrency: int = Field(4, gt=0, description="Judge requests in flight at once.")

    @field_validator("range")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not value[0] < value[1]:
            raise ValueError(f"range must be [low, high] with low < high, got {list(value)}")
        return value


class Multi(_Grader):
    """Sub-graders combined by a formula over their names, e.g. '0.7 * fact + 0.3 * style'."""

    type: Literal["multi"] = "multi"
    graders: dict[str, GraderSpec] = Field(..., min_length=1, description="Sub-graders by the name the formula uses.")
    calculate_output: str = Field(
        ..., description="Formula over the sub-grader names: + - * / ^, min, max, abs, floor, ceil, exp, sqrt, log."
    )

    @field_validator("graders")
    @classmethod
    def _names(cls, graders: dict[str, _Grader]) -> dict[str, _Grader]:
        bad = [k for k in graders if not k.isidentifier()]
        if bad:
            raise ValueError(f"sub-grader names must be identifiers to appear in the formula: {bad}")
        for key, grader in graders.items():
            grader.name = grader.name or key
        return graders

    @field_validator("calculate_output")
    @classmethod
    def _formula(cls, value: str, info: ValidationInfo) -> str:
        if "graders" in info.data:  # else the graders are invalid, and reported
            parse_formula(value, set(info.data["graders"]))
        return value


GraderSpec = Annotated[
    StringCheck | Regex | JsonMatch | TextSimilarity | Python | ScoreModel | Multi, Field(discriminator="type")
]
GRADER_TYPES = ("string_check", "regex", "json_match", "text_similarity", "python", "score_model", "multi")
Multi.model_rebuild()


def name_problems(graders: list, taken: set[str]) -> list[str]:
    """Top-level graders need distinct names that are no metric's (they are columns beside the metrics)."""
    out, seen = [], set()
    for i, g in enumerate(graders):
        if not g.name:
            out.append(f"eval.graders[{i}].name: required; name the grader (it is the column of its scores)")
        elif g.name in seen or g.name in taken:
            out.append(
                f"eval.graders[{i}].name: '{g.name}' is already "
                + ("a metric" if g.name in taken else "another grader's name")
                + "; give each grader its own name"
            )
        seen.add(g.name)
    return out
