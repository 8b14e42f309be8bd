"""The `tuneforge data prepare` configuration: a small typed model (YAML file or flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from tuneforge.config import Section, _problem, apply_overrides
from tuneforge.data.augment import OPS
from tuneforge.data.clean import PII_KINDS
from tuneforge.data.sources import DEFAULT_TEXT_UNIT, MAX_RECORD_BYTES
from tuneforge.errors import ConfigError, Problem


class CleanOptions(Section):
    """Defaults keep meaning: code indentation, whitespace inside lines, CJK punctuation and `²` stay byte-identical."""

    nfc: bool = Field(
        True, description="Unicode NFC: composes decomposed accents (e + U+0301 -> é); changes no visible character."
    )
    nfkc: bool = Field(
        False,
        description="Unicode NFKC instead of NFC (opt-in): also folds compatibility forms, so full-width "
        "letters and CJK punctuation (，：（）) become ASCII and ² becomes 2.",
    )
    line_endings: bool = Field(True, description="CRLF and lone CR become LF (counted as line_endings).")
    control_chars: bool = Field(
        True,
        description="Remove invisible control and format characters (zero-width space, soft hyphen, NUL...); "
        "newline, tab, ZWJ/ZWNJ, bidi marks and flag tag characters are kept.",
    )
    whitespace: Literal["keep", "line_ends", "collapse"] = Field(
        "line_ends",
        description="keep: untouched; line_ends: remove spaces/tabs at the end of lines only (indentation and spaces "
        "inside lines stay); collapse (opt-in): runs of spaces to one, lines trimmed, "
        "at most one blank line - breaks code. "
        "true/false of older configs mean collapse/keep.",
    )
    diff_samples: int = Field(
        20, ge=0, description="Before/after snippets kept per cleaning step in cleaning_diffs.jsonl."
    )
    strip_html: bool = Field(
        False, description="Replace HTML markup by its text (script/style dropped, entities decoded)."
    )
    redact_pii: list[Literal["email", "phone", "card"]] = Field(
        default_factory=list,
        description=f"PII to replace by [EMAIL]/[PHONE]/[CARD]; any of {', '.join(PII_KINDS)}. "
        "Cards must pass the Luhn check.",
    )

    @field_validator("whitespace", mode="before")
    @classmethod
    def _old_boolean(cls, value: object) -> object:
        return {True: "collapse", False: "keep"}.get(value, value) if isinstance(value, bool) else value


class DedupOptions(Section):
    exact: bool = Field(
        True,
        description="Drop examples whose normalised content (case, Unicode form, whitespace) equals an earlier one.",
    )
    near: bool = Field(True, description="Drop near-duplicates found by MinHash LSH on word n-grams.")
    threshold: float = Field(
        0.85, gt=0, lt=1, description="Estimated Jaccard similarity at or above which two examples are near-duplicates."
    )
    num_perm: int = Field(128, ge=16, le=512, description="MinHash permutations: more is more precise and slower.")
    ngram: int = Field(3, ge=1, le=10, description="Words per shingle.")


class SplitOptions(Section):
    train: float = Field(0.8, gt=0, le=1, description="Share of kept examples for training.")
    validation: float = Field(0.1, ge=0, lt=1, description="Share for validation (evaluated while training).")
    test: float = Field(0.1, ge=0, lt=1, description="Share for the held-out test set.")
    seed: int = Field(42, description="Seed of the shuffle; the same seed and data give the same split.")
    stratify: Literal["auto", "label", "none"] = Field(
        "auto",
        description="auto/label: keep label proportions in every split (classification data); none: plain random.",
    )
    group_by: str | None = Field(
        None, description="Metadata field (or extra column) whose examples stay in one split, e.g. customer_id."
    )

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitOptions:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must be 1, got {total:g}")
        return self


class AugmentOptions(Section):
    enabled: bool = Field(False, description="Add augmented copies of training examples (never validation or test).")
    copies: int = Field(1, ge=1, le=20, description="Augmented copies per training example.")
    ops: list[Literal["synonym", "swap", "delete"]] = Field(
        default_factory=lambda: list(OPS), description="Operations to pick from at random for each copy."
    )
    p: float = Field(0.1, gt=0, lt=1, description="Share of words changed by one operation.")
    synonyms: Path | None = Field(
        None, description="YAML/JSON synonym table (word: [synonyms]); a small built-in English table if unset."
    )
    seed: int = Field(0, description="Seed of the augmentation.")


class PrepareConfig(Section):
    """Steps of `tuneforge data prepare`: read -> clean -> dedup -> split -> augment -> write."""

    inputs: list[Path] = Field(
        ..., min_length=1, description="Data files or folders, read in order (earlier copies of duplicates are kept)."
    )
    test_inputs: list[Path] = Field(
        default_factory=list,
        description="An existing held-out test set (files or folders), kept whole as the test split so results stay "
        "comparable across rounds: checked and cleaned like the inputs (invalid records are rejected), "
        "never deduplicated away; "
        "examples of the inputs duplicating a test example (exactly or nearly) are removed instead, "
        "and the inputs are split "
        "into train and validation only (split.test is ignored).",
    )
    format: str = Field("auto", description="Record format of the inputs, or auto.")
    mapping: dict[str, str] = Field(
        default_factory=dict, description="Read other column names, ours: theirs (e.g. text: body)."
    )
    labels: list[str] | None = Field(None, description="Allowed labels; records with others are rejected.")
    max_record_bytes: int = Field(MAX_RECORD_BYTES, gt=0, description="Reject records larger than this many bytes.")
    include: list[str] = Field(
        default_factory=list,
        description="Globs of extra files to read from input folders (e.g. '*.md'); by default "
        "a folder is read for .jsonl/.json/.csv/.tsv/.parquet/.txt files only, never README/LICENSE.",
    )
    text_unit: Literal["paragraph", "line", "file"] = Field(
        DEFAULT_TEXT_UNIT,
        description="What one record of a .txt/.md file is: a "
        "paragraph (blank-line separated), a line, or the whole file.",
    )
    max_reject_share: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Fail (nothing written but rejects.jsonl) when more than this share of "
        "the records read is rejected; 1 accepts any share.",
    )
    clean: CleanOptions = Field(default_factory=CleanOptions)
    dedup: DedupOptions = Field(default_factory=DedupOptions)
    split: SplitOptions = Field(default_factory=SplitOptions)
    augment: AugmentOptions = Field(default_factory=AugmentOptions)

    @model_validator(mode="after")
    def _fixed_test_without_groups(self) -> PrepareConfig:
        if self.test_inputs and self.split.group_by:
            raise ValueError(
                "test_inputs with split.group_by is not supported: "
                "a group could sit in the fixed test set and in train; "
                "remove split.group_by or split the test set with the rest of the data"
            )
        return self


def load_prepare_config(config_or_data: str | Path, overrides: list[str] | None = None) -> PrepareConfig:
    """A YAML prepare config, or a data file/folder with default steps; `key=value` overrides."""
    path = Path(config_or_data)
    if path.suffix.lower() in (".yaml", ".yml") and path.is_file():
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid YAML", [Problem(str(path), str(exc).replace("\n", " "))]) from None
        if not isinstance(raw, dict):
            raise ConfigError(
                f"{path}: the top level must be a mapping",
                [Problem(str(path), "expected keys like inputs, clean, dedup, split")],
            )
        for key in ("inputs", "test_inputs"):
            if isinstance(raw.get(key), list):  # relative paths are relative to the config file
                raw[key] = [
                    str(path.parent / p) if isinstance(p, str) and not Path(p).is_absolute() else p for p in raw[key]
                ]
        source = str(path)
    else:
        raw, source = {"inputs": [str(path)]}, "prepare"
    raw = apply_overrides(raw, overrides or [])
    try:
        cfg = PrepareConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            f"{source}: {exc.error_count()} problem(s) in the prepare configuration",
            [_problem(source, e) for e in exc.errors()],
        ) from None
    missing = [
        Problem(f"{source}: {key}", f"not found: {p}", "fix the path")
        for key, paths in (("inputs", cfg.inputs), ("test_inputs", cfg.test_inputs))
        for p in paths
        if not Path(str(p).partition("#")[0]).exists()  # dataset_info.json#names: the description's file
    ]
    if missing:
        raise ConfigError(f"{source}: {len(missing)} missing input(s)", missing)
    return cfg
