"""/v1/chat/completions, /v1/completions (streamed as server-sent events or not) and
/v1/embeddings (the embedded MiniLM encoder)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tuneforge import __version__
from tuneforge.serve.api import chat_options as options
from tuneforge.serve.api.checks import refuse_unencodable
from tuneforge.serve.api.deps import Services, principal, services
from tuneforge.serve.api.errors import APIError, as_api_error
from tuneforge.serve.api.models import require_model
from tuneforge.serve.catalog import EMBEDDING_MODEL
from tuneforge.serve.engine import ClientGone, Sampling
from tuneforge.serve.ids import new_id, now
from tuneforge.serve.keys import Principal

# OpenAI's schema types this as a string (never null): the serving build, which is what changes outputs for a seed
SYSTEM_FINGERPRINT = f"tuneforge-{__version__}"
router = APIRouter(prefix="/v1")


def generative_model(svc: Services, who: Principal, model_id: str):
    ref = require_model(svc, who, model_id)
    if ref.kind == "embedding":
        raise APIError(
            400,
            f"'{model_id}' is an embedding model; use it with /v1/embeddings.",
            param="model",
            code="model_not_supported",
        )
    return ref


class _Request(BaseModel):
    # Unknown OpenAI fields (user, metadata, store...) are accepted and ignored;
    # fields that would change the answer and are not supported are refused below.
    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int | None = Field(None, gt=0)
    max_completion_tokens: int | None = Field(None, gt=0)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=128)  # the choices run as one batch
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # OpenAI's int64 range (torch's seeds fit it)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def text_is_unicode(cls, data: Any) -> Any:
        return refuse_unencodable(data)

    def sampling(self, top_logprobs: int | None = None, grammar=None) -> Sampling:
        from tuneforge.models.generate import Controls

        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stop) > 4:
            raise APIError(400, "At most 4 stop sequences are allowed.", param="stop")
        controls = Controls(
            self.presence_penalty, self.frequency_penalty, options.logit_bias(self.logit_bias), top_logprobs, grammar
        )
        return Sampling(
            self.max_completion_tokens or self.max_tokens or 256,
            self.temperature,
            self.top_p,
            tuple(stop),
            self.seed,
            controls,
        )

    def refuse(self, names: tuple[str, ...]) -> None:
        extra = self.model_extra or {}
        for name in names:
            if extra.get(name) not in (None, False, [], ["text"], "text", {"type": "text"}):
                raise APIError(
                    400, f"'{name}' is not supported by this server.", param=name, code="unsupported_parameter"
                )


class ChatRequest(_Request):
    messages: list[dict[str, Any]] = Field(min_length=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None

    def top(self) -> int | None:
        """How many alternatives each token's logprobs list (None: no logprobs)."""
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true.", param="top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Request):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=5)  # the legacy API's count of alternatives per token


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None

    @model_validator(mode="before")
    @classmethod
    def text_is_unicode(cls, data: Any) -> Any:
        return refuse_unencodable(data)


def chat_messages(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Role and text of each message; an assistant's tool_calls and a tool result's tool_call_id / name kept."""
    return options.request_messages(raw, _message)


def _message(i: int, m: dict[str, Any]) -> dict[str, Any]:
    content = m.get("content")
    if isinstance(content, list):  # content parts: only text parts can be used
        content = "".join(_text_part(part, f"messages[{i}].content[{k}]") for k, part in enumerate(content))
    if m.get("role") not in ("system", "developer", "user", "assistant", "tool") or not isinstance(content, str):
        raise APIError(400, f"messages[{i}] needs a role and a text content.", param=f"messages[{i}]")
    out = {"role": "system" if m["role"] == "developer" else m["role"], "content": content}
    if m["role"] == "tool":
        out.update({k: m[k] for k in ("tool_call_id", "name") if isinstance(m.get(k), str)})
    return out


def _text_part(part: Any, where: str) -> str:
    """One content part, `{"type": "text", "text": "..."}`: the only kind a text model can read."""
    if not isinstance(part, dict):
        raise APIError(
            400,
            f'{where}: a content part is an object like {{"type": "text", "text": "..."}}, '
            f"got {type(part).__name__ if part is not None else 'null'}.",
            param=where,
        )
    if part.get("type") != "text":
        raise APIError(400, f"{where}: only text parts are supported.", param=where)
    if not isinstance(part.get("text"), str):
        raise APIError(400, f"{where}.text must be a string.", param=f"{where}.text")
    return part["text"]


def _usage(results: list) -> dict[str, int]:
    prompt = results[0].prompt_tokens if results else 0  # the prompt is counted once, as OpenAI does
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@router.post("/chat/completions")
async def chat(
    body: ChatRequest, request: Request, who: Principal = Depends(principal), svc: Services = Depends(services)
):
    body.refuse(("functions", "function_call", "audio", "modalities", "prediction"))
    ref = generative_model(svc, who, body.model)
    conv = chat_messages(body.messages)
    tools, choice = options.read_tools(body)
    grammar, answer_format = options.call_grammar(tools, choice) if tools else None, body.response_format
    if grammar is not None and options.response_grammar(answer_format) is not None:
        raise APIError(
            400, "response_format cannot be combined with a required or named tool_choice.", param="response_format"
        )
    sampling = body.sampling(body.top(), grammar or options.response_grammar(answer_format))
    parse = bool(tools) and choice != "none"
    if tools or any("tool_calls" in m or m["role"] == "tool" for m in conv):
        prompt: Any = {"messages": conv, "tools": tools, "parse_tools": parse}
    else:
        prompt = conv
    started = time.perf_counter()
    prompt_text = "\n".join(m["content"] for m in conv if m["role"] == "user")
    meta = {"id": new_id("chatcmpl-"), "created": now(), "model": body.model, "system_fingerprint": SYSTEM_FINGERPRINT}

    def record(results: list) -> None:
        usage = _usage(results)
        svc.monitor.record(
            project_id=who.project_id,
            model=body.model,
            endpoint="chat",
            started=started,
            prompt_text=prompt_text,
            prompt_tokens=usage["prompt_tokens"],
            completion_tokens=usage["completion_tokens"],
            request=body.model_dump(),
            response={"choices": [r.text for r in results]},
        )

    if body.stream:
        return _sse(_stream_chat(svc, ref, prompt, sampling, body, meta, record, parse))
    try:
        results = await _while_connected(request, svc.engine.chat, ref, [prompt] * body.n, sampling)
    except Exception:
        svc.monitor.failed(body.model, "chat")
        raise
    await run_in_threadpool(record, results)  # a database write: keep it off the event loop
    choices = [
        {
            "index": i,
            "message": {
                "role": "assistant",
                "content": r.text,
                "refusal": None,
                **({"tool_calls": options.tool_calls_out(r.tool_calls)} if r.tool_calls else {}),
            },
            "finish_reason": "tool_calls" if r.tool_calls else r.finish_reason,
            "logprobs": options.chat_logprobs(r.logprobs),
        }
        for i, r in enumerate(results)
    ]
    return {"object": "chat.completion", **meta, "choices": choices, "usage": _usage(results)}


async def _stream_chat(svc: Services, ref, prompt, sampling, body, meta: dict, record, parse: bool):
    """Content deltas as tokens settle (with their logprobs). With tools to parse, each choice's answer is held
    until it is complete and sent as one content delta or as OpenAI's tool_call deltas (one per call)."""
    chunk = {"object": "chat.completion.chunk", **meta}

    def one(i: int, delta: dict, finish=None, logprobs=None) -> dict:
        return {**chunk, "choices": [{"index": i, "delta": delta, "finish_reason": finish, "logprobs": logprobs}]}

    for i in range(body.n):
        yield one(i, {"role": "assistant", "content": ""})
    pieces, task, cancel = _start(svc.engine.chat, ref, [prompt] * body.n, sampling)
    try:
        async for index, text, logprobs in _drain(pieces, task):
            if not parse:
                yield one(index, {"content": text}, logprobs=options.chat_logprobs(logprobs))
    finally:  # normal end, or the client went away mid-stream: either way nothing more to generate
        cancel.set()
    results = task.result()
    await run_in_threadpool(record, results)
    for i, r in enumerate(results):
        if parse and r.tool_calls:
            calls = options.tool_calls_out(r.tool_calls)
            yield one(i, {"tool_calls": [{"index": k, **c} for k, c in enumerate(calls)]}, None)
        elif parse and r.text:
            yield one(i, {"content": r.text}, logprobs=options.chat_logprobs(r.logprobs))
        yield one(i, {}, "tool_calls" if r.tool_calls else r.finish_reason)
    if (body.stream_options or {}).get("include_usage"):
        yield {**chunk, "choices": [], "usage": _usage(results)}


@router.post("/completions")
async def completions(
    body: CompletionRequest, request: Request, who: Principal = Depends(principal), svc: Services = Depends(services)
):
    body.refuse(("echo", "suffix", "best_of"))
    ref = generative_model(svc, who, body.model)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not prompts or any(not p for p in prompts):
        raise APIError(400, "prompt must be a non-empty string or a list of non-empty strings.", param="prompt")
    expanded = [p for p in prompts for _ in range(body.n)]  # choice index = prompt index * n + k
    sampling, started = body.sampling(body.logprobs), time.perf_counter()
    meta = {"id": new_id("cmpl-"), "created": now(), "model": body.model, "system_fingerprint": SYSTEM_FINGERPRINT}

    def record(results: list) -> None:
        completion = sum(r.completion_tokens for r in results)
        prompt_tokens = sum(r.prompt_tokens for r in results[:: body.n])
        svc.monitor.record(
            project_id=who.project_id,
            model=body.model,
            endpoint="completions",
            started=started,
            prompt_text="\n".join(prompts),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion,
            request=body.model_dump(),
            response={"choices": [r.text for r in results]},
        )
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
        }

    if body.stream:

        async def events() -> AsyncIterator[dict]:
            chunk = {"object": "text_completion", **meta}
            pieces, task, cancel = _start(svc.engine.complete, ref, expanded, sampling)
            try:
                sent = [0] * len(expanded)  # characters streamed per choice: the text_offset of its next token
                async for index, text, logprobs in _drain(pieces, task):
                    lp = options.completion_logprobs(logprobs, sent[index])
                    sent[index] += len(text)
                    yield {
                        **chunk,
                        "choices": [{"index": index, "text": text, "finish_reason": None, "logprobs": lp}],
                    }
            finally:  # normal end, or the client went away mid-stream
                cancel.set()
            results = task.result()
            usage = await run_in_threadpool(record, results)
            for i, r in enumerate(results):
                yield {
                    **chunk,
                    "choices": [{"index": i, "text": "", "finish_reason": r.finish_reason, "logprobs": None}],
                }
            if (body.stream_options or {}).get("include_usage"):
                yield {**chunk, "choices": [], "usage": usage}

        return _sse(events())
    results = await _while_connected(request, svc.engine.complete, ref, expanded, sampling)
    usage = await run_in_threadpool(record, results)
    choices = [
        {
            "index": i,
            "text": r.text,
            "finish_reason": r.finish_reason,
            "logprobs": options.completion_logprobs(r.logprobs),
        }
        for i, r in enumerate(results)
    ]
    return {"object": "text_completion", **meta, "choices": choices, "usage": usage}


async def _while_connected(request: Request, fn, ref, prompts, sampling, poll_s: float = 0.25) -> list:
    """A non-streamed generation that stops (queued: never starts; running: at its next token) once its
    client has disconnected: nobody would read the answer."""
    cancel = threading.Event()
    task = asyncio.ensure_future(fn(ref, prompts, sampling, cancel=cancel))
    try:
        while not (await asyncio.wait({task}, timeout=poll_s))[0]:
            if await request.is_disconnected():
                cancel.set()
                break
        return await task
    except ClientGone:  # it never started; nobody reads this answer
        raise APIError(499, "The client closed the request before it started.", code="client_closed_request") from None
    finally:  # also when uvicorn cancels the request at shutdown
        cancel.set()


def _start(fn, ref, prompts, sampling) -> tuple[asyncio.Queue, asyncio.Task, threading.Event]:
    """Run a generation that pushes (choice index, text, logprobs) into a queue from the engine thread;
    setting the returned event stops it at the next token."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()
    task = asyncio.ensure_future(
        fn(
            ref,
            prompts,
            sampling,
            on_text=lambda i, t, lp: loop.call_soon_threadsafe(pieces.put_nowait, (i, t, lp)),
            cancel=cancel,
        )
    )
    task.add_done_callback(lambda _: loop.call_soon_threadsafe(pieces.put_nowait, None))
    return pieces, task, cancel


async def _drain(pieces: asyncio.Queue, task: asyncio.Task) -> AsyncIterator[tuple[int, str, list | None]]:
    while (item := await pieces.get()) is not None:
        yield item
    while not pieces.empty():  # text queued before the completion marker was processed
        if (item := pieces.get_nowait()) is not None:
            yield item


def _sse(chunks: AsyncIterator[dict]) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk)}\n\n".encode()
        except Exception as exc:  # headers are sent: report the error in the stream, as OpenAI does
            yield f"data: {json.dumps(as_api_error(exc, 'a streamed response').body())}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.post("/embeddings")
async def embeddings(
    body: EmbeddingRequest, who: Principal = Depends(principal), svc: Services = Depends(services)
) -> dict:
    if body.model not in (EMBEDDING_MODEL, "all-MiniLM-L6-v2"):
        raise APIError(
            404,
            f"The embedding model '{body.model}' does not exist; use '{EMBEDDING_MODEL}'.",
            param="model",
            code="model_not_found",
        )
    if body.dimensions not in (None, 384):
        raise APIError(400, "MiniLM embeddings have 384 dimensions.", param="dimensions")
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts or any(not t for t in texts):
        raise APIError(400, "input must be a non-empty string or list of non-empty strings.", param="input")
    started = time.perf_counter()
    vectors, tokens = await svc.engine.embed(texts)  # (N, 384), L2-normalised
    await run_in_threadpool(
        svc.monitor.record,
        project_id=who.project_id,
        model=body.model,
        endpoint="embeddings",
        started=started,
        prompt_text="",
        prompt_tokens=tokens,
        completion_tokens=0,
    )
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
        for i, v in enumerate(vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": body.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _encode(vector: np.ndarray, fmt: str) -> list[float] | str:
    return (
        base64.b64encode(vector.astype("<f4").tobytes()).decode() if fmt == "base64" else vector.astype(float).tolist()
    )
