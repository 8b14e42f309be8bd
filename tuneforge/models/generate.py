"""Batched generation for chat prompts, with token accounting and stop strings, and the one rule
(`AnswerText`) that turns new tokens into an answer's text for the batched and the streamed paths."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from tuneforge.data.tokenize import encode_prompt
from tuneforge.models.chat_templates import end_of_turn_ids, prompt_policy


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end token or stop string) | "length" | "cancelled" (a streaming client left)


@torch.inference_mode()
def generate_batch(
    model,
    tokenizer,
    prompts: list[list[dict]],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop: list[str] | None = None,
    seed: int | None = None,
    adapter_names: list[str] | None = None,
) -> list[GenerationResult]:
    """Generate one answer per chat prompt (a list of role/content dicts), left-padded in one batch.

    `adapter_names`: for a peft model holding several LoRA adapters, the adapter of each
    prompt ("__base__" for none), so requests for different fine-tunes share one batch.
    """
    if seed is not None:
        torch.manual_seed(seed)
    policy = prompt_policy(tokenizer)  # the run's data.system_prompt, saved with its tokenizer
    encoded = [encode_prompt(tokenizer, p, policy) for p in prompts]
    width = max(len(e) for e in encoded)
    pad = tokenizer.pad_token_id
    device = next(model.parameters()).device
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, e in enumerate(encoded):  # left padding: every prompt ends at the last column
        ids[row, width - len(e) :] = torch.tensor(e)
        mask[row, width - len(e) :] = 1
    stop_ids = stop_token_ids(model, tokenizer)
    per_row = {"adapter_names": adapter_names} if adapter_names is not None else {}
    if direct_decoding(model):
        new_ids = decode(
            model, ids.to(device), mask.to(device), max_new_tokens, temperature, top_p, stop_ids, pad, per_row
        )
    else:  # prompt-learning adapters and other models whose generate() adds to the inputs
        sampling = temperature > 0
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=top_p if sampling else None,
            top_k=None,
            pad_token_id=pad,
            eos_token_id=stop_ids,
            **per_row,
        )  # (B, width + new)
        new_ids = out[:, width:]
    stops = set(stop_ids)
    results = []
    for row, e in enumerate(encoded):
        new = new_ids[row].tolist()
        ended = next((k for k, t in enumerate(new) if t in stops), None)
        new = new if ended is None else new[:ended]
        answer = AnswerText(tokenizer, stop)
        answer.add(new, last=True)
        reason = "stop" if ended is not None or answer.stopped else "length"
        results.append(GenerationResult(answer.text, len(e), len(new) + (ended is not None), reason))
    return results


class AnswerText:
    """New token ids -> the answer's text, the same for a batch and for a stream.

    The text is the tokens decoded (special tokens skipped) up to the first stop string, exactly:
    no whitespace is stripped, since a stream cannot take back spaces it has already sent (and
    leading spaces or newlines can be the answer's own, e.g. indented code). `add` returns the
    part that is now final: it holds back a half multi-byte character and a tail that may still
    grow into a stop string until the next tokens (or the last) settle it. The returned pieces,
    joined, are `text`.
    """

    def __init__(self, tokenizer, stop: list[str] | None = None) -> None:
        self.tokenizer, self.stops = tokenizer, [s for s in stop or [] if s]
        self.ids: list[int] = []
        self.text = ""  # the final part so far: everything `add` has returned
        self.stopped = False  # a stop string ended the answer; later tokens are ignored

    def add(self, ids: list[int], last: bool = False) -> str:
        if not self.stopped:
            self.ids.extend(ids)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = min((text.index(s) for s in self.stops if s in text), default=None)
        if cut is not None:
            text, self.stopped = text[:cut], True
        safe = len(text)
        if not (last or self.stopped):
            if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                safe = len(text.rstrip("\ufffd"))
            tail = text[:safe]  # hold back the longest tail that may grow into a stop string
            held = (k for s in self.stops for k in range(1, min(len(s), safe + 1)) if tail.endswith(s[:k]))
            safe -= max(held, default=0)
        if safe <= len(self.text):
            return ""
        piece, self.text = text[len(self.text) : safe], text[:safe]
        return piece


def direct_decoding(model) -> bool:
    """Can `decode` drive this model? Causal LMs whose forward takes a KV cache and `logits_to_keep`;
    not prompt-learning adapters (their generate() prepends virtual tokens or prefixes)."""
    if hasattr(model, "active_peft_config"):
        if model.active_peft_config.is_prompt_learning:
            return False
        model = model.get_base_model()
    if getattr(model.config, "is_encoder_decoder", False):
        return False
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def decode(
    model,
    ids: torch.Tensor,
    mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop_ids: list[int],
    pad_id: int,
    forward_kwargs: dict | None = None,
) -> torch.Tensor:
    """Greedy (temperature 0) or temperature / nucleus sampling with a KV cache: new tokens (B, <= max_new_tokens).

    The decode loop of `transformers`' `generate` (same token choices, same random draws for
    a seed) without its per-step machinery: the prompt's logits only at its last position, no
    mask at all for an unpadded batch, and a finished row is filled with `pad_id`. Rows are
    left-padded (`mask` 0 on the left), so every prompt ends at the last column.
    `forward_kwargs` go to every forward call (peft's per-row `adapter_names`).
    """
    fixed = forward_kwargs or {}
    batch, length = ids.shape
    padded = bool((mask == 0).any())
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    extra = {"attention_mask": mask, "position_ids": positions} if padded else {}
    out = model(
        input_ids=ids,
        past_key_values=DynamicCache(config=_base_config(model)),
        use_cache=True,
        logits_to_keep=1,
        **extra,
        **fixed,
    )
    stops = torch.tensor(stop_ids or [-1], device=ids.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=ids.device)
    chosen: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        token = _next_token(out.logits[:, -1], temperature, top_p)
        token = token.masked_fill(finished, pad_id)
        chosen.append(token)
        finished |= torch.isin(token, stops)
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        if padded:
            mask = torch.cat([mask, mask.new_ones((batch, 1))], dim=1)
            positions = positions[:, -1:] + 1
            extra = {"attention_mask": mask, "position_ids": positions}
        out = model(
            input_ids=token[:, None],
            past_key_values=out.past_key_values,
            use_cache=True,
            cache_position=torch.tensor([length + step], device=ids.device),
            **extra,
            **fixed,
        )
    return torch.stack(chosen, dim=1) if chosen else ids.new_zeros((batch, 0))


def _next_token(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Argmax, or a draw after temperature and top-p filtering (the order and rule of transformers' warpers)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    scores = logits.float() / temperature
    if top_p < 1.0:
        ascending, order = scores.sort(dim=-1)
        drop = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
        drop[:, -1] = False  # always keep the most likely token
        scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(scores.softmax(dim=-1), num_samples=1)[:, 0]


def _base_config(model):
    return model.get_base_model().config if hasattr(model, "get_base_model") else model.config


def stop_token_ids(model, tokenizer) -> list[int]:
    """The generation config's EOS ids, the tokenizer's EOS and the chat template's end-of-turn token
    (Gemma's <end_of_turn> and Phi-3's <|end|> are not the EOS; a model.chat_template's <|im_end|> is in no config)."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = list(configured) if isinstance(configured, list) else [configured] if configured is not None else []
    for extra in [tokenizer.eos_token_id, *end_of_turn_ids(tokenizer)]:
        if extra is not None and extra not in ids:
            ids.append(extra)
    return ids
