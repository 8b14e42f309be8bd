"""`prepare`: read -> clean -> dedup -> split -> augment -> write, with rejects and a manifest.

Two streaming passes keep memory flat in the number of examples except for ~18 bytes per
example of index arrays (hash, file, line, label id; +9 with group_by): pass 1 reads,
checks and cleans each record and spools it to disk; the dedup and split decisions are
then made on the arrays; pass 2 streams the spool into the split files.

Output folder: train.jsonl, validation.jsonl, test.jsonl, rejects.jsonl (record + reasons),
duplicates.jsonl (what each removed duplicate duplicated), cleaning_diffs.jsonl (before/after samples
per cleaning step), manifest.json (lineage). When nothing usable remains or more than
`max_reject_share` of the records is rejected, prepare raises after pass 1: only rejects.jsonl and
cleaning_diffs.jsonl are written.
"""

from __future__ import annotations

import json
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

import tuneforge
from tuneforge.data import split as splitting
from tuneforge.data.augment import Augmenter, load_synonyms
from tuneforge.data.clean import Cleaner, texts_of
from tuneforge.data.dedup import NearDuplicates, first_occurrence
from tuneforge.data.formats import detect, parse
from tuneforge.data.hashing import content_hash, content_text
from tuneforge.data.issues import Issue
from tuneforge.data.lineage import MANIFEST_KIND, combined_hash, dataset_fingerprint, file_sha256
from tuneforge.data.prepare_config import PrepareConfig
from tuneforge.data.readers import Checked, Tally, iter_checked
from tuneforge.data.types import Example, LabelledExample, TextExample
from tuneforge.errors import DataError, Problem

OUTPUTS = ("train.jsonl", "validation.jsonl", "test.jsonl")
_BATCH = 2048


@dataclass
class _Index:
    """Per kept-after-cleaning example: where it came from and what decides dedup and split."""

    files: array = field(default_factory=lambda: array("H"))
    lines: array = field(default_factory=lambda: array("i"))
    hashes: array = field(default_factory=lambda: array("q"))
    labels: array = field(default_factory=lambda: array("i"))  # label id, -1 if none
    groups: array = field(default_factory=lambda: array("q"))  # group id; the content hash when the field is missing
    grouped: array = field(default_factory=lambda: array("b"))
    label_ids: dict[str, int] = field(default_factory=dict)

    def add(self, file_idx: int, line: int | None, ex: Example, group_by: str | None) -> None:
        self.files.append(file_idx)
        self.lines.append(line or 0)
        h = content_hash(ex)
        self.hashes.append(h)
        label = ex.label if isinstance(ex, LabelledExample) else None
        self.labels.append(self.label_ids.setdefault(label, len(self.label_ids)) if label is not None else -1)
        if group_by is not None:
            value = ex.metadata.get(group_by)
            self.grouped.append(value is not None)
            self.groups.append(h if value is None else hash_value(value))


def hash_value(value: Any) -> int:
    return content_hash(TextExample(json.dumps(value, sort_keys=True, default=str)))


def prepare(
    cfg: PrepareConfig, out: str | Path, *, overwrite: bool = False, progress: Callable[[str, int], None] | None = None
) -> dict[str, Any]:
    """Run the configured steps into `out`; returns (and writes) the manifest."""
    out = Path(out)
    _check_out(out, overwrite)
    started = time.time()
    # an input from an earlier prepare keeps its lineage; "role" says which inputs are the fixed test set
    inputs = [
        {**dataset_fingerprint(p), "role": role}
        for role, paths in (("test", cfg.test_inputs), ("pool", cfg.inputs))
        for p in paths
    ]
    c = cfg.clean
    cleaner = Cleaner(
        c.nfkc, c.control_chars, c.whitespace, c.strip_html, tuple(c.redact_pii), c.nfc, c.line_endings, c.diff_samples
    )
    near = (
        NearDuplicates(out / ".signatures.bin", cfg.dedup.threshold, cfg.dedup.num_perm, cfg.dedup.ngram)
        if cfg.dedup.near
        else None
    )
    try:
        index, counts, file_names, test_files, read_tally = _pass_one(cfg, out, cleaner, near, progress)
        _write_diffs(out, cleaner)
        _check_usable(cfg, out, counts, read_tally)
        fixed = np.frombuffer(index.files, dtype=np.uint16) < test_files  # the fixed test set: kept whole, always test
        exact_of, near_of, similarity = _dedup(cfg, index, near)
        exact_of[fixed], near_of[fixed] = -1, -1
        kept = (exact_of < 0) & (near_of < 0)
        split_of = _split(cfg, index, kept, fixed)
        written = _pass_two(cfg, out, index, file_names, exact_of, near_of, similarity, split_of, progress)
    finally:  # temporary files, also when a step fails
        (out / ".spool.jsonl").unlink(missing_ok=True)
        if near is not None:
            near.remove_files()
    manifest = _manifest(cfg, out, inputs, counts, cleaner.counts, index, exact_of, near_of, split_of, written, started)
    manifest["steps"][0].update(read_tally.summary())
    (out / "manifest.json").write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8"
    )
    return manifest


@dataclass
class _ReadTally:
    """What pass 1 names besides counts: reject reasons, unused fields, skipped files and other warnings."""

    rejected: Tally = field(default_factory=Tally)
    unused: Tally = field(default_factory=Tally)
    warnings: Tally = field(default_factory=Tally)
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "rejected_first": self.rejected.to_dict(),
            "unused_fields": self.unused.to_dict(),
            "warnings": self.warnings.to_dict(),
            "skipped_files": self.skipped,
        }


def _write_diffs(out: Path, cleaner: Cleaner) -> None:
    with (out / "cleaning_diffs.jsonl").open("w", encoding="utf-8") as fh:
        for d in cleaner.diffs:
            fh.write(json.dumps(d, ensure_ascii=False) + "\n")


def _check_usable(cfg: PrepareConfig, out: Path, counts: Counter, tally: _ReadTally) -> None:
    """Fail loudly before writing splits when nothing usable remains or too much was rejected."""
    read, rejected = counts["read"], counts["rejected"]
    where = ", ".join(map(str, [*cfg.test_inputs, *cfg.inputs]))
    reasons = tally.rejected.problems()
    fix = "fix the records listed in rejects.jsonl, or pass --format / --map for another layout"
    if read == 0:
        raise DataError(f"{where}: no records to prepare", [Problem(where, "the inputs hold no records", "add data")])
    if rejected == read:
        raise DataError(
            f"{where}: nothing usable remains: all {read:,} records were rejected ({out / 'rejects.jsonl'}); {fix}",
            reasons,
        )
    if rejected / read > cfg.max_reject_share:
        raise DataError(
            f"{where}: {rejected:,} of {read:,} records ({rejected / read:.0%}) were rejected, "
            "more than max_reject_share "
            f"{cfg.max_reject_share:.0%}; {fix}, or raise --max-reject-share",
            reasons,
        )


def _check_out(out: Path, overwrite: bool) -> None:
    existing = [n for n in (*OUTPUTS, "manifest.json") if (out / n).exists()]
    if existing and not overwrite:
        raise DataError(
            f"{out} already holds a prepared dataset",
            [Problem(str(out), f"would overwrite {', '.join(existing)}", "choose another --out or pass --overwrite")],
        )
    out.mkdir(parents=True, exist_ok=True)


def _pass_one(
    cfg: PrepareConfig,
    out: Path,
    cleaner: Cleaner,
    near: NearDuplicates | None,
    progress: Callable[[str, int], None] | None,
) -> tuple[_Index, Counter, list[str], int, _ReadTally]:
    """Read, check and clean every record; spool good ones, write rejects. The fixed test
    inputs come first, so dedup keeps their copy; returns how many files they were."""
    index, counts, file_names, tally = _Index(), Counter(), [], _ReadTally()
    allowed = set(cfg.labels) if cfg.labels else None
    texts: list[str] = []
    test_files = 0
    with (
        (out / ".spool.jsonl").open("w", encoding="utf-8") as spool,
        (out / "rejects.jsonl").open("w", encoding="utf-8") as rejects,
    ):
        for k, path in enumerate([*cfg.test_inputs, *cfg.inputs]):
            if k == len(cfg.test_inputs):
                test_files = len(file_names)
            for checked in iter_checked(
                path, cfg.format, cfg.mapping, cfg.max_record_bytes, cfg.include, cfg.text_unit
            ):
                for w in checked.issues:
                    if w.severity == "warning":
                        tally.warnings.add(w.kind, w.where, w.message)
                if checked.example is None and not checked.errors:
                    tally.skipped += [i.message for i in checked.issues if i.kind == "skipped_files"]
                    continue  # a warning with no record (a BOM on an empty line, files a folder does not read)
                counts["read"] += 1
                example = _clean_or_reject(checked, cleaner, allowed, rejects, counts, tally.rejected)
                if example is None:
                    continue
                for key in checked.unused:
                    tally.unused.add(key, f"{checked.file}:{checked.line}")
                if not file_names or file_names[-1] != checked.file:
                    file_names.append(checked.file)
                index.add(len(file_names) - 1, checked.line, example, cfg.split.group_by)
                spool.write(json.dumps(example.to_dict(), ensure_ascii=False, default=str) + "\n")
                if near is not None:
                    texts.append(content_text(example))
                    if len(texts) >= _BATCH:
                        near.add(texts)
                        texts = []
                if progress and counts["read"] % 10000 == 0:
                    progress("read", counts["read"])
    if near is not None:
        near.add(texts)
    return index, counts, file_names, test_files, tally


def _clean_or_reject(
    checked: Checked, cleaner: Cleaner, allowed: set[str] | None, rejects: TextIO, counts: Counter, reasons: Tally
) -> Example | None:
    issues = list(checked.errors)
    example = None
    if not issues:
        example = cleaner.example(checked.example, checked.file, checked.line)
        if any(not t.strip() for t in texts_of(example)):
            issues.append(
                Issue("empty_after_cleaning", "a text field is empty after cleaning", checked.file, checked.line)
            )
        if allowed is not None and isinstance(example, LabelledExample) and example.label not in allowed:
            issues.append(
                Issue(
                    "label_not_in_set",
                    f"label {example.label!r} is not one of {sorted(allowed)}",
                    checked.file,
                    checked.line,
                    "label",
                )
            )
    if issues:
        entry = Checked(checked.file, checked.line, None, issues, checked.record, checked.raw).reject_entry()
        rejects.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")
        counts["rejected"] += 1
        for i in issues:
            counts[f"rejected.{i.kind}"] += 1
            reasons.add(i.kind, i.where, i.message)
        return None
    return example


def _dedup(cfg: PrepareConfig, index: _Index, near: NearDuplicates | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(index.hashes)
    exact_of = np.full(n, -1, dtype=np.int64)
    if cfg.dedup.exact and n:
        first = first_occurrence(np.frombuffer(index.hashes, dtype=np.int64))
        dup = first != np.arange(n)
        exact_of[dup] = first[dup]
    if near is None:
        return exact_of, np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.float32)
    near_of, similarity = near.resolve(exact_of < 0)
    return exact_of, near_of, similarity


def _split(cfg: PrepareConfig, index: _Index, kept: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """Split id per example (-1 for removed duplicates). Examples of the fixed test set (`fixed`)
    are test; the rest is split by ratio (train and validation only when there is a fixed test set)."""
    ratios = (cfg.split.train, cfg.split.validation, cfg.split.test)
    if cfg.test_inputs:
        pool = cfg.split.train + cfg.split.validation
        ratios = (cfg.split.train / pool, cfg.split.validation / pool, 0.0)
    ids = np.flatnonzero(kept & ~fixed)
    labels = np.frombuffer(index.labels, dtype=np.int32)[ids] if len(index.labels) else np.zeros(0, dtype=np.int32)
    stratify = cfg.split.stratify != "none" and labels.size > 0 and (labels >= 0).all()
    groups = np.frombuffer(index.groups, dtype=np.int64)[ids] if cfg.split.group_by else None
    split_of = np.full(len(kept), -1, dtype=np.int8)
    split_of[ids] = splitting.assign(len(ids), ratios, cfg.split.seed, labels if stratify else None, groups)
    split_of[kept & fixed] = 2
    return split_of


def _example_from(line: str) -> Example:
    """An example back from its spooled `to_dict()` line (every type's keys are distinct)."""
    record = json.loads(line)
    example, _ = parse(record, detect(record))
    return example


def _pass_two(
    cfg: PrepareConfig,
    out: Path,
    index: _Index,
    file_names: list[str],
    exact_of: np.ndarray,
    near_of: np.ndarray,
    similarity: np.ndarray,
    split_of: np.ndarray,
    progress: Callable[[str, int], None] | None,
) -> dict[str, Counter]:
    """Stream the spool into split files and duplicates.jsonl; add augmented training copies."""
    aug = cfg.augment
    augmenter = Augmenter(tuple(aug.ops), aug.p, aug.seed, load_synonyms(aug.synonyms)) if aug.enabled else None
    written: dict[str, Counter] = {name: Counter() for name in (*OUTPUTS, "duplicates.jsonl")}
    handles = {name: (out / name).open("w", encoding="utf-8") for name in written}
    try:
        with (out / ".spool.jsonl").open("r", encoding="utf-8") as spool:
            for i, line in enumerate(spool):
                if split_of[i] < 0:
                    target = int(exact_of[i] if exact_of[i] >= 0 else near_of[i])
                    entry = {
                        "file": file_names[index.files[i]],
                        "line": index.lines[i],
                        "kind": "exact" if exact_of[i] >= 0 else "near",
                        "duplicate_of": {"file": file_names[index.files[target]], "line": index.lines[target]},
                        "similarity": 1.0 if exact_of[i] >= 0 else round(float(similarity[i]), 3),
                        "example": json.loads(line),
                    }
                    handles["duplicates.jsonl"].write(json.dumps(entry, ensure_ascii=False) + "\n")
                    written["duplicates.jsonl"]["examples"] += 1
                    continue
                name = OUTPUTS[split_of[i]]
                handles[name].write(line)
                written[name]["examples"] += 1
                if name == "train.jsonl" and augmenter is not None:
                    _augment(augmenter, _example_from(line), aug.copies, handles[name], written[name])
                if progress and i % 10000 == 0:
                    progress("write", i)
    finally:
        for fh in handles.values():
            fh.close()
    return written


def _augment(augmenter: Augmenter, example: Example, copies: int, fh: TextIO, counts: Counter) -> None:
    for _ in range(copies):
        copy = augmenter.example(example)
        if copy is None:
            counts["augment_skipped"] += 1
            return
        copy.metadata["augmented_from_line"] = example.metadata.get("source_line")
        fh.write(json.dumps(copy.to_dict(), ensure_ascii=False, default=str) + "\n")
        counts["augmented"] += 1
        counts[f"augmented.{copy.metadata['augmented']}"] += 1


def _manifest(
    cfg: PrepareConfig,
    out: Path,
    inputs: list[dict],
    counts: Counter,
    clean_counts: Counter,
    index: _Index,
    exact_of: np.ndarray,
    near_of: np.ndarray,
    split_of: np.ndarray,
    written: dict[str, Counter],
    started: float,
) -> dict[str, Any]:
    n_exact, n_near = int((exact_of >= 0).sum()), int((near_of >= 0).sum())
    kept = sum(written[name]["examples"] for name in OUTPUTS)
    written["rejects.jsonl"] = Counter(examples=counts["rejected"])
    # "examples" counts the lines of each file: kept examples plus augmented copies.
    outputs = {
        name: {
            "sha256": file_sha256(out / name),
            "examples": written[name]["examples"] + written[name]["augmented"],
            "augmented": written[name]["augmented"],
        }
        for name in (*OUTPUTS, "rejects.jsonl", "duplicates.jsonl")
    }
    return {
        "kind": MANIFEST_KIND,
        "tuneforge_version": getattr(tuneforge, "__version__", None),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.time() - started, 3),
        "inputs": inputs,
        "config": cfg.model_dump(mode="json"),
        "steps": [
            {
                "name": "read",
                "params": {"format": cfg.format, "mapping": cfg.mapping, "labels": cfg.labels},
                "records": counts["read"],
                "rejected": counts["rejected"],
                "rejected_by_kind": {k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith("rejected.")},
            },
            {"name": "clean", "params": cfg.clean.model_dump(mode="json"), "counts": dict(clean_counts)},
            {
                "name": "dedup",
                "params": cfg.dedup.model_dump(mode="json"),
                "exact_removed": n_exact,
                "near_removed": n_near,
            },
            {
                "name": "split",
                "params": cfg.split.model_dump(mode="json"),
                "examples": {n.split(".")[0]: written[n]["examples"] for n in OUTPUTS},
                "ungrouped": _ungrouped(index, split_of),
                "labels": _label_counts(index, split_of),
            },
            {
                "name": "augment",
                "params": cfg.augment.model_dump(mode="json"),
                "added": written["train.jsonl"]["augmented"],
                "by_op": {
                    k.split(".", 1)[1]: v for k, v in written["train.jsonl"].items() if k.startswith("augmented.")
                },
                "skipped": written["train.jsonl"]["augment_skipped"],
            },
        ],
        "counts": {
            "read": counts["read"],
            "kept": kept,
            "rejected": counts["rejected"],
            "duplicates": n_exact + n_near,
            "augmented": written["train.jsonl"]["augmented"],
            "reconciled": counts["read"] == kept + counts["rejected"] + n_exact + n_near,
        },
        "outputs": outputs,
        "output_hash": combined_hash({name: outputs[name]["sha256"] for name in OUTPUTS}),
    }


def _label_counts(index: _Index, split_of: np.ndarray) -> dict[str, dict[str, int]]:
    """Label balance per split (classification only)."""
    if not index.label_ids:
        return {}
    names = {v: k for k, v in index.label_ids.items()}
    labels = np.frombuffer(index.labels, dtype=np.int32)
    return {
        split: {names[int(k)]: int(v) for k, v in zip(*np.unique(labels[split_of == s], return_counts=True))}
        for s, split in enumerate(splitting.SPLITS)
    }


def _ungrouped(index: _Index, split_of: np.ndarray) -> int:
    """Kept examples without the group field (each became its own group)."""
    if not len(index.grouped):
        return 0
    return int(((np.frombuffer(index.grouped, dtype=np.int8) == 0) & (split_of >= 0)).sum())
