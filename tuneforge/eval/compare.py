"""Score one approach (a model + a prompt builder) on held-out conversations.

For each test example we keep everything needed later (per-example metric values, the
answer's summed loss and token count, prompt/completion tokens, metadata), so intervals,
slices and paired comparisons are computed afterwards without re-running the model.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tuneforge.data.tokenize import IGNORE, Encoded, encode_conversation
from tuneforge.data.tool_calls import tool_prompt
from tuneforge.data.types import Conversation, Message
from tuneforge.eval.baselines import PromptBuilder, as_dicts, zero_shot
from tuneforge.eval.bootstrap import (
    Interval,
    mean_ci,
    paired_difference,
    paired_statistic_difference,
    ratio_ci,
    statistic_ci,
)
from tuneforge.eval.graders import Grader, GraderMetric, Sample, item_of
from tuneforge.eval.metrics import Metric, normalize_answer
from tuneforge.models.generate import generate_batch
from tuneforge.objectives.base import pad_batch


@dataclass
class ApproachResult:
    name: str
    model: str
    predictions: list[str]
    references: list[str]
    metadata: list[dict[str, Any]]
    loss_sums: list[float]  # summed answer-token loss per example
    loss_tokens: list[int]  # answer tokens per example
    prompt_tokens: list[int]
    completion_tokens: list[int]
    seconds_per_request_batched: float  # wall time of batched generation / requests
    seconds: float  # everything this approach cost to evaluate (prompts, loss, generation, latency)
    latencies: list[float] = field(default_factory=list)  # seconds, one request at a time
    prompts: list[list[dict]] = field(default_factory=list)
    scores: dict[str, list[float]] = field(default_factory=dict)  # per-example grader scores, by grader name
    # per grader, the error of each item it could not grade (None where it graded it)
    grade_errors: dict[str, list[str | None]] = field(default_factory=dict)


@torch.no_grad()
def sequence_nll(model, feats: Sequence[Encoded], batch_size: int, pad_id: int) -> tuple[list[float], list[int]]:
    """Summed next-token cross-entropy over the labelled tokens of each feature, and their count."""
    device = next(model.parameters()).device
    sums, counts = [], []
    for i in range(0, len(feats), batch_size):
        batch = {k: v.to(device) for k, v in pad_batch(feats[i : i + batch_size], pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
        targets = batch["labels"][:, 1:]  # (B, T-1): token t is predicted at position t-1
        nll = F.cross_entropy(
            logits[:, :-1].transpose(1, 2).float(), targets, ignore_index=IGNORE, reduction="none"
        )  # (B, T-1)
        sums += nll.sum(dim=1).tolist()
        counts += (targets != IGNORE).sum(dim=1).tolist()
    return sums, counts


def answer_losses(
    model,
    tokenizer,
    prompts: Sequence[list[Message]],
    references: Sequence[str | Message],
    batch_size: int,
    max_length: int,
    tools: Sequence[list[dict] | None] | None = None,
) -> tuple[list[float], list[int]]:
    """Summed loss of each reference answer given its prompt (demonstrations have weight 0), and its token count.
    A reference may be the answer message itself (tool calls, rendered as training renders them, with `tools`)."""
    answers = [r if isinstance(r, Message) else Message("assistant", r) for r in references]
    convs = [Conversation(list(p) + [a], tools=t) for p, a, t in zip(prompts, answers, tools or [None] * len(answers))]
    return sequence_nll(
        model, [encode_conversation(tokenizer, c, max_length) for c in convs], batch_size, tokenizer.pad_token_id
    )


def context_window(model, fallback: int = 2048) -> int:
    return int(getattr(model.config, "max_position_embeddings", None) or fallback)


def score_approach(
    name: str,
    model_ref: str,
    model,
    tokenizer,
    conversations: list[Conversation],
    builder: PromptBuilder = zero_shot,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    latency_samples: int = 0,
) -> ApproachResult:
    """Generate greedy answers and measure answer loss for one approach."""
    t_start = time.perf_counter()
    prompts = [builder(c) for c in conversations]
    references = [c.reference for c in conversations]
    answers = [
        replace(c.messages[c.last_assistant_index()], weight=None) if c.tools else r
        for c, r in zip(conversations, references)
    ]
    tools = [c.tools for c in conversations]
    sums, counts = answer_losses(model, tokenizer, prompts, answers, batch_size, context_window(model), tools)
    asked = [tool_prompt(p, t) if t else as_dicts(p) for p, t in zip(prompts, tools)]  # tools rendered as trained
    predictions, p_tokens, c_tokens = [], [], []
    started = time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        for r in generate_batch(model, tokenizer, asked[i : i + batch_size], max_new_tokens):
            predictions.append(r.text)
            p_tokens.append(r.prompt_tokens)
            c_tokens.append(r.completion_tokens)
    batched = (time.perf_counter() - started) / max(len(prompts), 1)
    latencies = []
    if latency_samples:
        generate_batch(model, tokenizer, asked[:1], max_new_tokens)  # warm-up: first call pays one-off costs
    for p in asked[:latency_samples]:  # one request at a time: what a single user waits
        t0 = time.perf_counter()
        generate_batch(model, tokenizer, [p], max_new_tokens)
        latencies.append(time.perf_counter() - t0)
    return ApproachResult(
        name,
        model_ref,
        predictions,
        references,
        [dict(c.metadata) for c in conversations],
        sums,
        counts,
        p_tokens,
        c_tokens,
        batched,
        time.perf_counter() - t_start,
        latencies,
        [as_dicts(p) for p in prompts],  # the messages' text, for the report (tools are in `asked`)
    )


def grade(result: ApproachResult, graders: Sequence[Grader]) -> None:
    """Score every answer of `result` with each grader, once (a judge is called once per answer)."""
    samples = [Sample(p) for p in result.predictions]
    items = [item_of(r, m) for r, m in zip(result.references, result.metadata)]
    for g in graders:
        batch = g.grade_batch(samples, items)
        result.scores[g.name], result.grade_errors[g.name] = batch.scores, batch.errors


def metric_values(result: ApproachResult, metric: Metric | GraderMetric) -> list[float] | None:
    """Per-example values of an example metric or a grader (None for corpus metrics)."""
    if metric.kind == "graded":
        return result.scores[metric.name]
    return metric.per_example(result.predictions, result.references) if metric.kind == "example" else None


def metric_interval(
    result: ApproachResult,
    metric: Metric | GraderMetric,
    samples: int,
    confidence: float,
    seed: int = 0,
    subset: Sequence[int] | None = None,
) -> Interval:
    """Mean and bootstrap interval of `metric` over all examples (or the `subset` of indices)."""
    idx = np.arange(len(result.predictions)) if subset is None else np.asarray(subset)
    if metric.kind != "corpus":
        values = np.asarray(metric_values(result, metric))[idx]
        return mean_ci(values, samples, confidence, seed)
    preds, refs = [result.predictions[i] for i in idx], [result.references[i] for i in idx]
    return statistic_ci(
        len(idx), lambda s: metric.fn([preds[i] for i in s], [refs[i] for i in s]), samples, confidence, seed
    )


def metric_difference(
    a: ApproachResult,
    b: ApproachResult,
    metric: Metric | GraderMetric,
    samples: int,
    confidence: float,
    subset: Sequence[int] | None = None,
) -> tuple[Interval, float]:
    """Paired interval of metric(a) - metric(b) on the same examples, and the share of resamples where a wins."""
    idx = np.arange(len(a.predictions)) if subset is None else np.asarray(subset)
    if metric.kind != "corpus":
        va, vb = np.asarray(metric_values(a, metric))[idx], np.asarray(metric_values(b, metric))[idx]
        return paired_difference(va, vb, samples, confidence)
    refs = [a.references[i] for i in idx]
    pa, pb = [a.predictions[i] for i in idx], [b.predictions[i] for i in idx]
    return paired_statistic_difference(
        len(idx),
        lambda s: metric.fn([pa[i] for i in s], [refs[i] for i in s]),
        lambda s: metric.fn([pb[i] for i in s], [refs[i] for i in s]),
        samples,
        confidence,
    )


def summarise(
    result: ApproachResult,
    metrics: Sequence[Metric | GraderMetric],
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """The eval.json entry of one approach: metrics with intervals, tokens, latency."""
    loss = ratio_ci(result.loss_sums, result.loss_tokens, samples, confidence, seed)
    out = {
        "loss": loss.to_dict(),
        # perplexity is monotone in the per-token loss, so its interval is exp of the loss interval
        "perplexity": Interval(*(math.exp(min(v, 50.0)) for v in (loss.mean, loss.ci_low, loss.ci_high))).to_dict(),
    }
    for m in metrics:
        out[m.name] = metric_interval(result, m, samples, confidence, seed).to_dict()
    n = max(len(result.predictions), 1)
    return {
        "name": result.name,
        "model": result.model,
        "metrics": out,
        "prompt_tokens_per_request": round(sum(result.prompt_tokens) / n, 1),
        "completion_tokens_per_request": round(sum(result.completion_tokens) / n, 1),
        "seconds_per_request_batched": round(result.seconds_per_request_batched, 4),
        "latency_seconds": round(float(np.median(result.latencies)), 4) if result.latencies else None,
        "examples": len(result.predictions),
        "eval_seconds": round(result.seconds, 1),
        **(
            {"grader_errors": {n: sum(e is not None for e in errs) for n, errs in result.grade_errors.items()}}
            if result.grade_errors
            else {}
        ),
    }


def answer_in_prompt(result: ApproachResult) -> float:
    """Share of examples whose reference answer appears verbatim (normalised) in the prompt sent.

    For RAG this separates the retriever's failures (the answer was never shown) from the
    model's (it was shown and not used)."""
    hits = [
        normalize_answer(ref) in normalize_answer(" ".join(m["content"] for m in prompt[:-1]))
        for prompt, ref in zip(result.prompts, result.references)
    ]
    return sum(hits) / max(len(hits), 1)


def prediction_rows(result: ApproachResult) -> list[dict[str, Any]]:
    rows = [
        {"prompt": p[-1]["content"] if p else "", "reference": r, "prediction": y, "prompt_tokens": t, **meta}
        for p, r, y, t, meta in zip(
            result.prompts, result.references, result.predictions, result.prompt_tokens, result.metadata
        )
    ]
    for i, row in enumerate(rows):  # each grader's score of this answer, and why it could not grade it
        if result.scores:
            row["grades"] = {n: round(v[i], 4) for n, v in result.scores.items()}
        errors = {n: e[i] for n, e in result.grade_errors.items() if e[i]}
        if errors:
            row["grade_errors"] = errors
    return rows


def write_predictions(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
