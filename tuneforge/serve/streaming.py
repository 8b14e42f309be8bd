"""Generation of one prompt token by token, with stop strings found as text arrives.

The batched, non-streamed chat path uses `tuneforge.models.generate.generate_batch`;
this module serves what that helper does not: server-sent-event streaming and raw-text
prompts (/v1/completions). Sampling follows the same rules (greedy at temperature 0).
"""

from __future__ import annotations

import threading
from typing import Callable

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from tuneforge.models.generate import GenerationResult, stop_token_ids


class _StopStrings(BaseStreamer, StoppingCriteria):
    """Decodes new tokens as they come, hands out text that cannot be the start of a stop
    string, and ends generation once a stop string or a stop token appears."""

    def __init__(self, tokenizer, stops: list[str], stop_ids: set[int], on_text: Callable[[str], None], cancel: threading.Event | None = None) -> None:
        self.tokenizer, self.stops, self.stop_ids, self.on_text = tokenizer, [s for s in stops if s], stop_ids, on_text
        self.cancel = cancel
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already handed out
        self.prompt_seen = False
        self.finished: str | None = None  # "stop" once a stop string/token ended the text
        self.text = ""

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first passes the prompt
            self.prompt_seen = True
            return
        if self.finished:
            return
        for token in value.reshape(-1).tolist():
            if token in self.stop_ids:
                self.finished = "stop"
                break
            self.ids.append(token)
        self._emit()

    def end(self) -> None:
        self._emit(final=True)

    def _emit(self, final: bool = False) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = min((text.index(s) for s in self.stops if s in text), default=None)
        if cut is not None:
            text, self.finished = text[:cut], "stop"
        safe = len(text)
        if not (final or self.finished):
            if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                safe = len(text.rstrip("\ufffd"))
            for s in self.stops:  # hold back a tail that may grow into a stop string
                for k in range(min(len(s) - 1, safe), 0, -1):
                    if text[:safe].endswith(s[:k]):
                        safe -= k
                        break
        if safe > self.sent:
            self.on_text(text[self.sent:safe])
            self.sent = safe
        self.text = text[:max(safe, self.sent)]

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        done = self.finished is not None or (self.cancel is not None and self.cancel.is_set())
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def generate_one(model, tokenizer, prompt_ids: list[int], *, max_new_tokens: int, temperature: float, top_p: float,
                 stop: list[str] | None, seed: int | None, on_text: Callable[[str], None] = lambda _: None,
                 cancel: threading.Event | None = None) -> GenerationResult:
    """One prompt, streamed through `on_text`; stops early once `cancel` is set (the client left)."""
    if seed is not None:
        torch.manual_seed(seed)
    stops = stop_token_ids(model, tokenizer)
    streamer = _StopStrings(tokenizer, stop or [], set(stops), on_text, cancel)
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], device=device)  # (1, T)
    sampling = temperature > 0
    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=sampling,
                   temperature=temperature if sampling else None, top_p=top_p if sampling else None, top_k=None,
                   pad_token_id=tokenizer.pad_token_id, eos_token_id=stops, streamer=streamer, stopping_criteria=StoppingCriteriaList([streamer]))
    completion = min(len(streamer.ids) + (streamer.finished is not None), max_new_tokens)  # the stop token counts, as in generate_batch
    cancelled = cancel is not None and cancel.is_set() and completion < max_new_tokens
    return GenerationResult(streamer.text, len(prompt_ids), completion, streamer.finished or ("cancelled" if cancelled else "length"))
