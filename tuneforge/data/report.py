"""`build_report`: statistics, token counts with the model's tokenizer and chat template,
and a cost/compute estimate for training on a data file, a folder or a prepared dataset.

The returned dict is plain JSON (the CLI prints it, renders it with rich, or as HTML via
`report_html`); the eval module reuses its "cost" section.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.data import costs, length, token_count
from tuneforge.data.lineage import find_prepared_manifest
from tuneforge.data.readers import Tally, iter_checked
from tuneforge.data.sources import DEFAULT_TEXT_UNIT
from tuneforge.data.stats import DataStats, describe
from tuneforge.data.types import Conversation, Example, LabelledAnswer, PreferencePair, TextExample
from tuneforge.errors import DataError, Problem

HIST_BINS = 20


def build_report(
    path: str | Path,
    tokenizer: Any = None,
    *,
    model: str | None = "demo",
    format: str = "auto",
    mapping: str | dict[str, str] | None = None,
    epochs: float | str = 3.0,
    max_tokens: int | None = None,
    overlength: str | None = None,
    prices: costs.PriceTable | None = None,
    params: int | None = None,
    sample: int = 5000,
    measure_hardware: bool = True,
    seed: int = 0,
    include: tuple[str, ...] | list[str] = (),
    text_unit: str = DEFAULT_TEXT_UNIT,
) -> dict[str, Any]:
    """Statistics and cost estimate of the training data at `path`.

    tokenizer: a tokenizer object; if None, `model`'s tokenizer is loaded (None: no token stats).
    model: model name or folder, also used to count parameters for the FLOPs estimate.
    sample: examples tokenized (a seeded reservoir); larger files get estimated totals.
    epochs: passes for the cost; "auto": the epochs rule (`length.default_epochs`), shown as `epochs_rule`.
    overlength: data.overlength - then `max_tokens` is the run's model.max_length; examples over it are counted
    (`tokens.over_max_length`) and the cost is counted on the tokens training keeps (`tokens.trained_tokens`:
    capped at max_length for truncate, without the longer examples for drop).
    """
    path = Path(path)
    data_path, splits = _training_file(path)
    stats, unused, invalid = DataStats(sample=sample, seed=seed), Tally(), Tally()
    no_user = 0
    for checked in iter_checked(data_path, format, mapping, include=include, text_unit=text_unit):
        if checked.example is not None:
            stats.add(checked.example, checked.line)
            no_user += _no_user_or_system(checked.example)
            for key in checked.unused:
                unused.add(key, f"{checked.file}:{checked.line}")
        elif checked.errors:
            stats.invalid += 1
            for e in checked.errors:
                invalid.add(e.kind, e.where, e.message)
    if stats.examples == 0:  # a report of nothing would read as "no cost"
        raise DataError(
            f"{data_path}: no usable examples ({stats.invalid:,} invalid record(s)); "
            f"run `tuneforge data validate {data_path}`",
            invalid.problems() or [Problem(str(data_path), "no records", "add data")],
        )
    report: dict[str, Any] = {
        "path": str(path),
        "training_file": str(data_path),
        "splits": splits,
        **stats.summary(),
        "unused_fields": unused.to_dict(),
        "invalid_reasons": invalid.to_dict(),
        "no_user_or_system": no_user,
    }
    used = length.resolve_epochs(epochs, stats.examples)
    report["epochs_rule"] = {
        "epochs": used,
        "source": "auto" if epochs == "auto" else "given",
        "auto": length.default_epochs(stats.examples),
        "rule": f"3, kept so that {stats.examples:,} examples x epochs stays within "
        f"{length.MIN_TARGET_EXAMPLES}..{length.MAX_TARGET_EXAMPLES:,}",
    }
    epochs = used
    if tokenizer is None and model is not None:  # after reading: a data problem is reported without loading a model
        tokenizer = token_count.load_tokenizer(model)
    report["messages_histogram"] = {str(k): v for k, v in sorted(Counter(stats.messages.tolist()).items())}
    prompt = completion = 0.0
    train_tokens = None
    if tokenizer is not None:
        tokens = _token_stats(tokenizer, stats, max_tokens, overlength, str(data_path))
        report["tokens"] = tokens
        train_tokens, prompt, completion = (
            tokens["trained_tokens"],
            tokens["prompt_tokens_mean"],
            tokens["completion_tokens_mean"],
        )
    if params is None and model is not None:
        params = costs.count_parameters(model)
    peak = costs.measure_peak_flops() if measure_hardware and params is not None else None
    if train_tokens is not None:
        report["cost"] = costs.estimate(
            train_tokens, epochs, prices or costs.PriceTable(), prompt, completion, params, peak
        )
        if params is None:
            report["cost"]["note"] = (
                "no FLOPs/time estimate: the model's parameter count is unknown (tokenizer-only folder?); pass params="
            )
    return report


def _training_file(path: Path) -> tuple[Path, dict[str, int]]:
    """A prepared dataset folder reports on its train split; anything else on itself."""
    manifest_path = find_prepared_manifest(path) if path.is_dir() else None
    if manifest_path is None:
        return path, {}
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    return path / "train.jsonl", {
        k.split(".")[0]: v["examples"]
        for k, v in manifest["outputs"].items()
        if k.split(".")[0] in ("train", "validation", "test")
    }


def _lengths(tokenizer: Any, example: Example) -> tuple[int, int, int, int]:
    """(total, loss-bearing, prompt, completion) tokens of one example."""
    from tuneforge.data.tokenize import IGNORE, encode_conversation, encode_prompt

    if isinstance(example, Conversation) and getattr(tokenizer, "chat_template", None):
        enc = encode_conversation(tokenizer, example, max_length=10**9)
        loss = sum(1 for label in enc.labels if label != IGNORE)
        asked = [{"role": m.role, "content": m.content} for m in example.prompt_messages]
        prompt = len(encode_prompt(tokenizer, asked)) if asked else 0  # an answer with no prompt before it
        return len(enc.input_ids), loss, prompt, len(enc.input_ids) - prompt
    total = token_count.count_tokens(tokenizer, example)
    if isinstance(example, TextExample):
        return total, total, 0, 0
    if isinstance(example, (Conversation, PreferencePair, LabelledAnswer)):
        return total, total, total, 0
    return total, 0, total, 0  # classification / NER: the loss is on labels, not tokens


def _no_user_or_system(ex: Example) -> bool:
    """A chat whose prompt has neither a user nor a system message (the model answers nothing it was asked)."""
    messages = ex.messages if isinstance(ex, Conversation) else getattr(ex, "prompt", None)
    return isinstance(messages, list) and not any(m.role in ("user", "system") for m in messages)


def _token_stats(
    tokenizer: Any, stats: DataStats, max_tokens: int | None, overlength: str | None = None, file: str = ""
) -> dict[str, Any]:
    limit = max_tokens or token_count.context_window(tokenizer)
    rows = np.array([_lengths(tokenizer, ex) for _, ex in stats.reservoir], dtype=np.int64).reshape(-1, 4)  # (S, 4)
    scale = stats.examples / max(1, len(rows))  # 1.0 unless the file was sampled
    total, loss = rows[:, 0], rows[:, 1]
    counts, edges = np.histogram(total, bins=HIST_BINS) if len(total) else (np.zeros(0), np.zeros(0))
    over = int((total > limit).sum())
    # what training keeps of each example: data.overlength truncate cuts at the limit, drop leaves it out
    kept = np.where(total > limit, 0, total) if overlength == "drop" else np.minimum(total, limit)
    out_of_limit = {}
    if overlength is not None:
        places = [
            getattr(ex, "source", "") or f"{file}:{stats.lines[i]}"
            for (i, ex), n in zip(stats.reservoir, total)
            if n > limit
        ]
        found = length.OverLength(limit, stats.examples, places)
        out_of_limit["over_max_length"] = {**found.to_dict(overlength), "count": int(round(over * scale))}
    return {
        **out_of_limit,
        "trained_tokens": int(round((kept if overlength is not None else total).sum() * scale)),
        "sampled": len(rows),
        "estimated": scale != 1.0,
        "context_limit": limit,
        "per_example": describe(total),
        "loss_tokens_per_example": describe(loss),
        "total_tokens": int(round(total.sum() * scale)),
        "loss_tokens": int(round(loss.sum() * scale)),
        "over_context": int(round(over * scale)),
        "over_context_share": round(over / max(1, len(rows)), 4),
        "prompt_tokens_mean": float(rows[:, 2].mean()) if len(rows) else 0.0,
        "completion_tokens_mean": float(rows[:, 3].mean()) if len(rows) else 0.0,
        "histogram": {"counts": counts.astype(int).tolist(), "edges": [round(float(e), 1) for e in edges]},
    }
