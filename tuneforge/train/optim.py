"""Optimizer and learning-rate schedule."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn
from transformers import get_scheduler


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over trainable parameters; no weight decay on biases and norm weights (1-D tensors)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel updates all tensors in one pass: measured 2-3x faster per step than the
    # default for-each path on a 29.5M-parameter Llama on 2 CPU cores (17-22 ms vs 42-56 ms).
    fused = all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") for p in decay + no_decay)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, fused=fused)


def build_scheduler(optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup_ratio: float):
    """transformers' schedule (`get_scheduler`: linear, cosine, constant with warm-up) with one change: warm-up
    starts at lr / (warmup + 1) instead of 0.

    transformers' step-0 factor is 0/warmup, so the first optimizer step changes nothing (AdamW's moments still
    move): a wasted step, 1 of 6 in a short run. Here optimizer step i (1-based) of the warm-up runs at
    i / (warmup + 1) of the peak; from step warmup + 1 on, the factors are transformers' own (the peak, then the
    decay), so a run without warm-up is unchanged.
    """
    warmup = math.ceil(total_steps * warmup_ratio)
    name = "constant_with_warmup" if kind == "constant" else kind
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    if warmup:
        decay = scheduler.lr_lambdas
        scheduler.lr_lambdas = [partial(_warmup_from_first_step, warmup=warmup, after=f) for f in decay]
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):  # the factor of step 0, set again
            group["lr"] = base * _warmup_from_first_step(0, warmup, decay[0])
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    return scheduler


def _warmup_from_first_step(step: int, warmup: int, after) -> float:
    return (step + 1) / (warmup + 1) if step < warmup else after(step)
