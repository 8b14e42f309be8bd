"""Batched generation for chat prompts, with token accounting and stop strings, and the one rule
(`AnswerText`) that turns new tokens into an answer's text for the batched and the streamed paths."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
    logprobs: list[TokenLogprob] | None = None  # one per token of `text`, when asked for
    tool_calls: list | None = None  # the calls parsed from `text` (tuneforge.data.types.ToolCall), when tools


@dataclass
class TokenLogprob:
    """A generated token's log-probability under the model (log_softmax of its raw logits, before penalties,
    bias, grammar and temperature, as vLLM reports them) and the `top` most likely (id, logprob) at that step."""

    token: int
    logprob: float
    bytes: bytes = b""  # what the token spells (part of a character for some byte-level tokens)
    top: list[tuple[int, float, bytes]] = field(default_factory=list)


@dataclass(frozen=True)
class Controls:
    """OpenAI's sampling controls beyond temperature and top_p, applied at every step of `decode`.

    Penalties follow OpenAI's formula over the tokens generated so far (not the prompt):
    logit[j] -= frequency_penalty * count[j] + presence_penalty * (count[j] > 0); `logit_bias` adds its
    value to a token's logit; `grammar` (a `tuneforge.models.constrained.Grammar`) masks every token that
    cannot continue a valid output. Hashable, so requests with equal controls can share a batch.
    """

    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    top_logprobs: int | None = None  # None: no logprobs; k: the chosen token's and the k most likely
    grammar: Any = None

    def steer(self, batch: int, vocab: int, device, tokenizer, stop_ids: list[int]) -> Steer | None:
        return None if self == Controls() else Steer(self, batch, vocab, device, tokenizer, stop_ids)


class Steer:
    """The per-call state of `Controls` in a decode loop: token counts (B, V), the bias (V,), one grammar
    matcher per row, and the logprobs of each row's tokens."""

    def __init__(self, controls: Controls, batch: int, vocab: int, device, tokenizer, stop_ids: list[int]) -> None:
        self.c = controls
        penalised = controls.presence_penalty != 0 or controls.frequency_penalty != 0
        self.counts = torch.zeros(batch, vocab, device=device) if penalised else None  # (B, V)
        self.bias = None
        if controls.logit_bias:
            self.bias = torch.zeros(vocab, device=device)  # (V,)
            ids, values = zip(*controls.logit_bias)
            self.bias[list(ids)] = torch.tensor(values, device=device)
        self.matchers = (
            [controls.grammar.matcher(tokenizer, vocab, stop_ids) for _ in range(batch)] if controls.grammar else None
        )
        self.logprobs: list[list[TokenLogprob]] = [[] for _ in range(batch)]
        self._raw: torch.Tensor | None = None
        self._tokenizer = tokenizer

    def scores(self, logits: torch.Tensor, finished: torch.Tensor) -> torch.Tensor:
        """Raw logits (B, V) -> the logits to sample from."""
        if self.c.top_logprobs is not None:
            self._raw = logits.float().log_softmax(dim=-1)  # (B, V)
        if self.counts is None and self.bias is None and self.matchers is None:
            return logits
        out = logits.float().clone()
        if self.counts is not None:
            out -= self.c.frequency_penalty * self.counts + self.c.presence_penalty * (self.counts > 0).float()
        if self.bias is not None:
            out += self.bias
        if self.matchers is not None:
            for row, matcher in enumerate(self.matchers):
                if not finished[row]:
                    matcher.mask(out, row)
        return out

    def advance(self, token: torch.Tensor, finished: torch.Tensor) -> None:
        """Record the chosen tokens (B,) of the rows still running."""
        if self.counts is not None:
            self.counts.scatter_add_(1, token[:, None], (~finished).float()[:, None])
        for row in (~finished).nonzero()[:, 0].tolist():
            t = int(token[row])
            if self.matchers is not None:
                self.matchers[row].accept(t)
            if self._raw is not None:
                from tuneforge.models.constrained import token_bytes

                top = self._raw[row].topk(self.c.top_logprobs) if self.c.top_logprobs else None
                pairs = list(zip(top.indices.tolist(), top.values.tolist())) if top is not None else []
                spelled = [(i, lp, token_bytes(self._tokenizer, i)) for i, lp in pairs]
                entry = TokenLogprob(t, float(self._raw[row, t]), token_bytes(self._tokenizer, t), spelled)
                self.logprobs[row].append(entry)


@torch.inference_mode()
def generate_batch(
    model,
    tokenizer,
    prompts: list[list[dict] | dict],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop: list[str] | None = None,
    seed: int | None = None,
    adapter_names: list[str] | None = None,
    controls: Controls | None = None,
    seeds: list[int] | None = None,
) -> list[GenerationResult]:
    """Generate one answer per chat prompt (a list of role/content dicts), left-padded in one batch.

    `adapter_names`: for a peft model holding several LoRA adapters, the adapter of each
    prompt ("__base__" for none), so requests for different fine-tunes share one batch.
    `seeds`: one per prompt, each row drawing from its own generator (its answer does not depend on
    what else is in the batch); `seed` seeds the global generator for the whole batch instead.
    """
    policy = prompt_policy(tokenizer)  # the run's data.system_prompt, saved with its tokenizer
    encoded = [encode_chat(tokenizer, p, policy) for p in prompts]
    return generate_ids(
        model,
        tokenizer,
        encoded,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=stop,
        seed=seed,
        seeds=seeds,
        controls=controls,
        forward_kwargs={"adapter_names": adapter_names} if adapter_names is not None else None,
    )


@torch.inference_mode()
def generate_ids(
    model,
    tokenizer,
    encoded: list[list[int]],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop: list[str] | None = None,
    seed: int | None = None,
    seeds: list[int] | None = None,
    controls: Controls | None = None,
    stop_ids: list[int] | None = None,
    forward_kwargs: dict | None = None,
    on_text: Callable[[int, str, list[TokenLogprob] | None], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[GenerationResult]:
    """Answers to tokenized prompts in one left-padded batch. `on_text(row, piece, logprobs)` streams each
    row's final text as it settles (with the logprobs of the tokens it covers); `cancel` stops every row
    at its next token (finish_reason "cancelled")."""
    if seed is not None:
        torch.manual_seed(seed)
    width = max(len(e) for e in encoded)
    pad = tokenizer.pad_token_id
    device = next(model.parameters()).device
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, e in enumerate(encoded):  # left padding: every prompt ends at the last column
        ids[row, width - len(e) :] = torch.tensor(e)
        mask[row, width - len(e) :] = 1
    stop_ids = stop_token_ids(model, tokenizer) if stop_ids is None else stop_ids
    stops = set(stop_ids)
    controls = controls or Controls()
    if not direct_decoding(model):  # prompt-learning adapters and other models whose generate() adds to the inputs
        if controls != Controls() or on_text is not None or cancel is not None:
            raise ValueError("this model decodes through generate(): no controls or streaming")
        args = (max_new_tokens, temperature, top_p, stop_ids, pad, forward_kwargs)
        if seeds is None:
            rows = _generate(model, ids.to(device), mask.to(device), *args).tolist()
        else:  # one generate() per row, each from its own seed (a batch shares one generator there)
            rows = []
            for row, row_seed in enumerate(seeds):
                torch.manual_seed(row_seed)
                one = {k: v[row : row + 1] for k, v in (forward_kwargs or {}).items()}  # adapter_names
                out = _generate(model, ids[row : row + 1].to(device), mask[row : row + 1].to(device), *args[:-1], one)
                rows.append(out[0].tolist())
        return [_result(tokenizer, stop, stops, e, rows[row], None) for row, e in enumerate(encoded)]
    steer = controls.steer(len(encoded), _vocab_size(model), device, tokenizer, stop_ids)
    answers = [AnswerText(tokenizer, stop) for _ in encoded]
    sent = [0] * len(encoded)  # logprobs already streamed, per row
    ended: list[bool] = [False] * len(encoded)

    def on_step(token: torch.Tensor, finished: torch.Tensor) -> torch.Tensor | None:
        if on_text is None and cancel is None and not stop:
            return None
        done = torch.zeros_like(finished)
        for row, t in enumerate(token.tolist()):
            if ended[row]:
                done[row] = True
                continue
            last = t in stops
            piece = answers[row].add([] if last else [t], last=last)
            ended[row] = last or answers[row].stopped
            done[row] = ended[row]
            if on_text is not None and (piece or ended[row]):
                lps = steer.logprobs[row] if steer is not None and steer.c.top_logprobs is not None else None
                upto = len(answers[row].ids)
                on_text(row, piece, None if lps is None else lps[sent[row] : upto])
                sent[row] = upto
        if cancel is not None and cancel.is_set():
            done[:] = True
        return done

    rows = [torch.Generator(device=device).manual_seed(s) for s in seeds] if seeds is not None else None
    new_ids = decode(
        model,
        ids.to(device),
        mask.to(device),
        max_new_tokens,
        temperature,
        top_p,
        stop_ids,
        pad,
        forward_kwargs,
        steer=steer,
        generators=rows,
        on_step=on_step,
    )
    results = []
    for row, e in enumerate(encoded):
        logprobs = steer.logprobs[row] if steer is not None and controls.top_logprobs is not None else None
        result = _result(tokenizer, stop, stops, e, new_ids[row].tolist(), logprobs)
        if on_text is not None:  # whatever the stream still held back (a tail that did not become a stop string)
            piece = answers[row].add([], last=True)
            lps = result.logprobs[sent[row] :] if result.logprobs is not None else None
            if piece or lps:
                on_text(row, piece, lps)
        if (
            cancel is not None
            and cancel.is_set()
            and result.finish_reason == "length"
            and (result.completion_tokens < max_new_tokens)
        ):
            result.finish_reason = "cancelled"
        results.append(result)
    return results


def _result(tokenizer, stop, stops: set[int], encoded: list[int], new: list[int], logprobs) -> GenerationResult:
    """One row's answer: the tokens up to its stop token, cut at the first stop string."""
    ended = next((k for k, t in enumerate(new) if t in stops), None)
    new = new if ended is None else new[:ended]
    answer = AnswerText(tokenizer, stop)
    answer.add(new, last=True)
    reason = "stop" if ended is not None or answer.stopped else "length"
    if logprobs is not None:
        logprobs = logprobs[: len(answer.ids)]
    return GenerationResult(answer.text, len(encoded), len(new) + (ended is not None), reason, logprobs)


def _generate(model, ids, mask, max_new_tokens, temperature, top_p, stop_ids, pad, forward_kwargs) -> torch.Tensor:
    sampling = temperature > 0
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        temperature=temperature if sampling else None,
        top_p=top_p if sampling else None,
        top_k=None,
        pad_token_id=pad,
        eos_token_id=stop_ids,
        **(forward_kwargs or {}),
    )  # (B, width + new)
    return out[:, ids.shape[1] :]


def _vocab_size(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


def encode_chat(tokenizer, prompt: list[dict] | dict, policy: str = "keep") -> list[int]:
    """A chat prompt's tokens: a list of role/content messages, or {"messages": [...], "tools": [...]} for a
    request that offers tools (messages may carry tool_calls / tool_call_id / name). Tools are rendered as
    training renders them (`tuneforge.data.tool_calls.template_messages`): by the chat template when it
    supports tools, else the documented fallback (tools in the system prompt, hermes <tool_call> blocks)."""
    if not isinstance(prompt, dict):
        return encode_prompt(tokenizer, prompt, policy)
    from tuneforge.data.chat_spans import apply_system_prompt
    from tuneforge.data.tool_calls import template_messages
    from tuneforge.data.types import Message, ToolCall

    messages = [
        Message(
            m["role"],
            m.get("content") or "",
            tool_calls=[ToolCall(c["name"], c["arguments"], c.get("id")) for c in m["tool_calls"]]
            if m.get("tool_calls")
            else None,
            tool_call_id=m.get("tool_call_id"),
            name=m.get("name"),
        )
        for m in prompt["messages"]
    ]
    rendered, tools = template_messages(messages, prompt.get("tools"), getattr(tokenizer, "chat_template", None))
    if tools is None:  # the fallback: plain messages
        return encode_prompt(tokenizer, rendered, policy)
    kept, _, _ = apply_system_prompt(rendered, policy, "the prompt")
    try:
        text = tokenizer.apply_chat_template(kept, tools=tools, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # jinja's errors, or a template that indexes what our messages lack
        raise ToolsNotRendered(f"this model's chat template cannot render these tools or tool messages: {exc}") from exc
    return tokenizer(text, add_special_tokens=False)["input_ids"]


class ToolsNotRendered(ValueError):
    """The chat template fails on a request's tools (the API answers 400 with this message)."""


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
    *,
    steer: Steer | None = None,
    generators: list[torch.Generator] | None = None,
    on_step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None,
    repeat: int = 1,
) -> torch.Tensor:
    """Greedy (temperature 0) or temperature / nucleus sampling with a KV cache: new tokens (B, <= max_new_tokens).

    The decode loop of `transformers`' `generate` (same token choices, same random draws for
    a seed) without its per-step machinery: the prompt's logits only at its last position, no
    mask at all for an unpadded batch, and a finished row is filled with `pad_id`. Rows are
    left-padded (`mask` 0 on the left), so every prompt ends at the last column.
    `forward_kwargs` go to every forward call (peft's per-row `adapter_names`). `steer` adjusts each
    step's logits (`Controls`), `generators` give each row its own random draws, and `on_step(token,
    finished)` may end rows early (a stop string, a client gone) by returning a (B,) mask.
    `repeat` samples that many answers per prompt from one prefill: the prompt's KV cache and last logits are
    expanded to B x repeat rows (row b * repeat + k is prompt b's k-th answer), as GRPO's groups want; `steer`,
    `generators` and `on_step` then see B x repeat rows.
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
    if repeat > 1:  # one prefill per prompt, shared by its answers: (B, ...) -> (B x repeat, ...)
        out.past_key_values.batch_repeat_interleave(repeat)
        out.logits = out.logits.repeat_interleave(repeat, dim=0)
        mask, positions = mask.repeat_interleave(repeat, dim=0), positions.repeat_interleave(repeat, dim=0)
        extra = {"attention_mask": mask, "position_ids": positions} if padded else {}
        batch *= repeat
    stops = torch.tensor(stop_ids or [-1], device=ids.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=ids.device)
    chosen: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        logits = out.logits[:, -1]  # (B, V)
        if steer is not None:
            logits = steer.scores(logits, finished)
        token = _next_token(logits, temperature, top_p, generators)
        token = token.masked_fill(finished, pad_id)
        if steer is not None:
            steer.advance(token, finished)
        chosen.append(token)
        ended = on_step(token, finished) if on_step is not None else None
        finished |= torch.isin(token, stops)
        if ended is not None:
            finished |= ended
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


def _next_token(
    logits: torch.Tensor, temperature: float, top_p: float, generators: list[torch.Generator] | None = None
) -> torch.Tensor:
    """Argmax, or a draw after temperature and top-p filtering (the order and rule of transformers' warpers);
    with `generators`, row b draws from generators[b]."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    scores = logits.float() / temperature
    if top_p < 1.0:
        ascending, order = scores.sort(dim=-1)
        drop = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
        drop[:, -1] = False  # always keep the most likely token
        scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = scores.softmax(dim=-1)  # (B, V)
    if generators is None:
        return torch.multinomial(probs, num_samples=1)[:, 0]
    return torch.cat([torch.multinomial(p[None], 1, generator=g)[:, 0] for p, g in zip(probs, generators)])


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
