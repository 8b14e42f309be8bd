"""Streamed generation: the rows of one request (its `n` choices) token by token, with stop strings found
as text arrives, for server-sent events and raw-text prompts (/v1/completions).

Models our decode loop drives run all rows as one batch through `generate_ids` (with the request's
`Controls`); others (prompt-learning adapters) go through transformers' `generate` one prompt at a time,
without controls. Sampling follows the same rules as the batched path and the text comes from the same
`AnswerText`, so a streamed answer joins up to the batched one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from tuneforge.models.generate import (
    AnswerText,
    Controls,
    GenerationResult,
    TokenLogprob,
    direct_decoding,
    generate_ids,
    stop_token_ids,
)


def generate_rows(
    model,
    tokenizer,
    encoded: list[list[int]],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop: list[str],
    seed: int | None,
    controls: Controls | None = None,
    on_text: Callable[[int, str, list[TokenLogprob] | None], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[GenerationResult]:
    """One request's prompts (its choices), streamed through `on_text(row, piece, logprobs)`; stops once
    `cancel` is set (the client left). With a seed, row k draws from its own generator seeded seed + k,
    so choices differ and each is the same whatever ran beside it."""
    seeds = None if seed is None else [seed + k for k in range(len(encoded))]
    if direct_decoding(model):
        return generate_ids(
            model,
            tokenizer,
            encoded,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            seeds=seeds,
            controls=controls,
            stop_ids=stop_token_ids(model, tokenizer),
            on_text=on_text,
            cancel=cancel,
        )
    results = []
    for row, ids in enumerate(encoded):
        if cancel is not None and cancel.is_set():
            break
        emit = (lambda text, r=row: on_text(r, text, None)) if on_text else (lambda _: None)
        results.append(
            generate_one(
                model,
                tokenizer,
                ids,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                stop=stop,
                seed=None if seeds is None else seeds[row],
                on_text=emit,
                cancel=cancel,
            )
        )
        if results[-1].finish_reason == "cancelled":
            break
    return results


class _StopStrings(BaseStreamer, StoppingCriteria):
    """Hands out the answer's text as tokens come (`AnswerText`: the batched path's rule) and ends
    generation once a stop token or a stop string appears, or the client has gone."""

    def __init__(
        self,
        tokenizer,
        stops: list[str],
        stop_ids: set[int],
        on_text: Callable[[str], None],
        cancel: threading.Event | None = None,
    ) -> None:
        self.answer, self.stop_ids, self.on_text, self.cancel = AnswerText(tokenizer, stops), stop_ids, on_text, cancel
        self.prompt_seen = False
        self.finished: str | None = None  # "stop" once a stop string/token ended the text

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first passes the prompt
            self.prompt_seen = True
            return
        if self.finished:
            return
        new = []
        for token in value.reshape(-1).tolist():
            if token in self.stop_ids:
                self.finished = "stop"
                break
            new.append(token)
        self._send(self.answer.add(new, last=self.finished is not None))

    def end(self) -> None:
        self._send(self.answer.add([], last=True))

    def _send(self, piece: str) -> None:
        if self.answer.stopped:
            self.finished = "stop"
        if piece:
            self.on_text(piece)

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        done = self.finished is not None or (self.cancel is not None and self.cancel.is_set())
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def generate_one(
    model,
    tokenizer,
    prompt_ids: list[int],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop: list[str] | None,
    seed: int | None,
    on_text: Callable[[str], None] = lambda _: None,
    cancel: threading.Event | None = None,
) -> GenerationResult:
    """One prompt, streamed through `on_text`; stops early once `cancel` is set (the client left)."""
    if seed is not None:
        torch.manual_seed(seed)
    stops = stop_token_ids(model, tokenizer)
    streamer = _StopStrings(tokenizer, stop or [], set(stops), on_text, cancel)
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], device=device)  # (1, T)
    sampling = temperature > 0
    model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        temperature=temperature if sampling else None,
        top_p=top_p if sampling else None,
        top_k=None,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stops,
        streamer=streamer,
        stopping_criteria=StoppingCriteriaList([streamer]),
    )
    # the stop token counts, as in generate_batch
    completion = min(len(streamer.answer.ids) + (streamer.finished is not None), max_new_tokens)
    cancelled = cancel is not None and cancel.is_set() and completion < max_new_tokens
    reason = streamer.finished or ("cancelled" if cancelled else "length")
    return GenerationResult(streamer.answer.text, len(prompt_ids), completion, reason)
