"""Cost and compute estimates for a planned training run.

Money: tokens x epochs x price per 1K tokens, from a price table (YAML-configurable; the
defaults are example hosted-API prices). Compute: the standard 6 x parameters x tokens
FLOPs of a forward+backward pass (Kaplan et al. 2020), divided by this machine's measured
matmul throughput - a lower bound on time, since real training reaches a fraction of peak.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from tuneforge.config import Section, _problem
from tuneforge.errors import ConfigError, Problem

TYPICAL_UTILISATION = 0.3  # share of matmul peak a fine-tuning loop usually sustains (MFU)


class PriceTable(Section):
    training_per_1k: float = Field(0.008, ge=0, description="Price of 1K training tokens (per epoch), in `currency`.")
    input_per_1k: float = Field(0.012, ge=0, description="Price of 1K prompt tokens when serving the tuned model.")
    output_per_1k: float = Field(0.016, ge=0, description="Price of 1K generated tokens when serving the tuned model.")
    currency: str = Field("USD", description="Currency of the prices.")


def load_prices(path: str | Path | None) -> PriceTable:
    if path is None:
        return PriceTable()
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return PriceTable.model_validate(raw)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"cannot read price table {path}",
            [
                Problem(
                    str(path),
                    str(exc).splitlines()[0],
                    "write training_per_1k: ..., input_per_1k: ..., output_per_1k: ...",
                )
            ],
        ) from None
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid price table", [_problem(str(path), e) for e in exc.errors()]) from None


def count_parameters(model: str | Path) -> int | None:
    """Parameters of a causal LM, from its config on the meta device (no weights are loaded);
    None when `model` has no model config (a tokenizer-only folder)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tuneforge.models.loading import resolve_model_path

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(model))
        with torch.device("meta"):
            m = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError):
        return None
    return sum(p.numel() for p in m.parameters())


def measure_peak_flops(size: int = 1024, seconds: float = 0.5) -> float:
    """float32 matmul FLOP/s on this machine with the current torch thread count."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up (thread pool, allocation)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return 2 * size**3 * n / (time.perf_counter() - start)


def estimate(
    train_tokens: float,
    epochs: float,
    prices: PriceTable,
    prompt_tokens: float = 0.0,
    completion_tokens: float = 0.0,
    params: int | None = None,
    peak_flops: float | None = None,
) -> dict[str, Any]:
    """Training cost, per-1K-requests serving cost, FLOPs and time for `train_tokens` x `epochs`."""
    tokens = train_tokens * epochs
    out: dict[str, Any] = {
        "epochs": epochs,
        "training_tokens": int(tokens),
        "currency": prices.currency,
        "training_cost": round(tokens / 1000 * prices.training_per_1k, 4),
        "serving_cost_per_1k_requests": round(
            prompt_tokens * prices.input_per_1k + completion_tokens * prices.output_per_1k, 4
        ),
        "prices": prices.model_dump(),
    }
    if params is not None:
        flops = 6 * params * tokens
        out.update(params=params, flops=flops)
        if peak_flops:
            out.update(
                peak_flops_per_s=peak_flops,
                seconds_at_peak=flops / peak_flops,
                seconds_typical=flops / (peak_flops * TYPICAL_UTILISATION),
                typical_utilisation=TYPICAL_UTILISATION,
            )
    return out
