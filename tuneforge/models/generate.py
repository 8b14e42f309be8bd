"""Batched generation for chat prompts, with token accounting and stop strings."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tuneforge.data.tokenize import encode_prompt


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end token or stop string) | "length"


@torch.no_grad()
def generate_batch(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 64, temperature: float = 0.0,
                   top_p: float = 1.0, stop: list[str] | None = None, seed: int | None = None) -> list[GenerationResult]:
    """Generate one answer per chat prompt (a list of role/content dicts), left-padded in one batch."""
    if seed is not None:
        torch.manual_seed(seed)
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    width = max(len(e) for e in encoded)
    pad = tokenizer.pad_token_id
    device = next(model.parameters()).device
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, e in enumerate(encoded):  # left padding: every prompt ends at the last column
        ids[row, width - len(e):] = torch.tensor(e)
        mask[row, width - len(e):] = 1
    sampling = temperature > 0
    out = model.generate(
        input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
        do_sample=sampling, temperature=temperature if sampling else None, top_p=top_p if sampling else None,
        top_k=None, pad_token_id=pad, eos_token_id=stop_token_ids(model, tokenizer),
    )  # (B, width + new)
    stops = set(stop_token_ids(model, tokenizer))
    results = []
    for row, e in enumerate(encoded):
        new = out[row, width:].tolist()
        ended = next((k for k, t in enumerate(new) if t in stops), None)
        new = new if ended is None else new[:ended]
        text = tokenizer.decode(new, skip_special_tokens=True)
        reason = "stop" if ended is not None else "length"
        for s in stop or []:
            if s and s in text:
                text, reason = text[: text.index(s)], "stop"
        results.append(GenerationResult(text.strip(), len(e), len(new) + (ended is not None), reason))
    return results


def stop_token_ids(model, tokenizer) -> list[int]:
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured] if configured is not None else []
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids
