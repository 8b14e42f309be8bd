"""Cost and benefit: serving cost per request of each approach, training cost, break-even.

Few-shot and RAG pay for their longer prompts on every request; fine-tuning pays once for
training and then serves short prompts. Training cost comes from the data report's
estimate (`tuneforge.data.report.build_report`: training-file tokens x epochs x price),
with the epochs the run actually completed (early stopping can end it sooner).
Break-even against an alternative = training cost / (alternative's cost per request -
fine-tuned cost per request): after that many requests fine-tuning is cheaper overall.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tuneforge.config import RunConfig
from tuneforge.data.costs import PriceTable, load_prices
from tuneforge.data.report import build_report

CHAT_BASELINES = ("base", "few_shot", "rag")  # prompts a generative base answers
# a frozen encoder's alternatives for classification (eval/encoder_baselines.py): embeddings, no fine-tuning
ENCODER_BASELINES = ("zero_shot_embedding", "knn", "linear_probe")
BASELINES = CHAT_BASELINES + ENCODER_BASELINES  # approaches that need no fine-tuning; every other is a tuned model


def epochs_run(cfg: RunConfig, run_dir: Path | None) -> float:
    """Epochs the run completed (from its manifest), else the configured epochs."""
    manifest = run_dir / "manifest.json" if run_dir else None
    if manifest and manifest.exists():
        info = json.loads(manifest.read_text())
        steps, per_epoch = info.get("result", {}).get("steps"), info.get("data_stats", {}).get("steps_per_epoch")
        if steps and per_epoch:
            return steps / per_epoch
    return cfg.train.epochs


def training_cost(cfg: RunConfig, tokenizer, run_dir: Path | None, prices: PriceTable) -> dict[str, Any]:
    epochs = epochs_run(cfg, run_dir)
    report = build_report(
        cfg.data.train,
        tokenizer,
        model=None,
        format=cfg.data.format,
        epochs=epochs,
        prices=prices,
        measure_hardware=False,
    )
    cost = report["cost"]
    return {
        "training_tokens": cost["training_tokens"],
        "epochs": round(epochs, 3),
        "training_cost": cost["training_cost"],
        "currency": cost["currency"],
        "source": "tuneforge.data.report.build_report",
    }


def request_cost(approach: dict[str, Any], prices: PriceTable) -> float:
    return (
        approach["prompt_tokens_per_request"] * prices.input_per_1k
        + approach["completion_tokens_per_request"] * prices.output_per_1k
    ) / 1000


def break_even(train_cost: float, tuned_per_request: float, other_per_request: float) -> int | None:
    """Requests after which training + tuned serving costs less than the alternative; None if never."""
    saving = other_per_request - tuned_per_request
    if saving <= 0:
        return None
    return math.ceil(train_cost / saving)


def cost_report(
    approaches: list[dict[str, Any]], trainings: dict[str, dict[str, Any]], prices: PriceTable
) -> dict[str, Any]:
    """Per-request cost of every approach; break-even of every tuned approach (a key of
    `trainings`: approach name -> its run's training cost) against every baseline."""
    per_request = {a["name"]: round(request_cost(a, prices), 6) for a in approaches}
    rows = {
        a["name"]: {
            "prompt_tokens_per_request": a["prompt_tokens_per_request"],
            "completion_tokens_per_request": a["completion_tokens_per_request"],
            "cost_per_request": per_request[a["name"]],
            "cost_per_1k_requests": round(1000 * per_request[a["name"]], 4),
            "latency_seconds": a["latency_seconds"],
            "seconds_per_request_batched": a["seconds_per_request_batched"],
        }
        for a in approaches
    }
    even = {
        tuned: {
            other: break_even(training["training_cost"], per_request[tuned], per_request[other])
            for other in per_request
            if other in BASELINES
        }
        for tuned, training in trainings.items()
        if tuned in per_request
    }
    return {"prices": prices.model_dump(), "approaches": rows, "training": trainings, "break_even_requests": even}


def load_price_table(path: Path | None) -> PriceTable:
    return load_prices(path)
