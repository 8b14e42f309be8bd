"""Generation of one prompt token by token, with stop strings found as text arrives.

The batched, non-streamed chat path uses `tuneforge.models.generate.generate_batch`;
this module serves what that helper does not: server-sent-event streaming and raw-text
prompts (/v1/completions). Sampling follows the same rules (greedy at temperature 0), and the
text comes from the same `AnswerText`, so a streamed answer joins up to the batched one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from tuneforge.models.generate import AnswerText, GenerationResult, stop_token_ids


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
