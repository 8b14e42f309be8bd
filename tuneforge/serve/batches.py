"""OpenAI's Batch API: an uploaded JSONL of requests, answered in the background into output and error files.

Batches run in the API process, not in a training worker: the API process holds the inference engine
(loaded models, the batching scheduler, the fair queue), so batch requests share the weights online
requests use and are scheduled beside them, a few at a time, instead of loading a second copy of every
model in a worker. Each request line goes through the same route function as an online request (the
same checks, limits and answers). API processes sharing the database claim batches with a compare-and-set
and hold them by a heartbeat; a batch whose process stopped is taken over after LEASE_S by another (or the
restarted) one and starts over (its requests are answered again; nothing half-written is kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import or_, select, update

from tuneforge.serve import files
from tuneforge.serve.api.errors import APIError, as_api_error, not_found
from tuneforge.serve.ids import new_id, now
from tuneforge.serve.keys import Principal
from tuneforge.serve.tables import Batch, Project

log = logging.getLogger(__name__)

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
MAX_REQUESTS = 50_000  # OpenAI's limit per batch
WINDOW_S = {"24h": 24 * 3600}
CONCURRENCY = 4  # requests of one batch in the engine at once: enough to batch them, few enough for online traffic
ACTIVE = ("validating", "in_progress", "cancelling")
LEASE_S = 30.0  # a batch whose API process has not written for this long is taken over by another
DONE = ("completed", "failed", "expired", "cancelled")


def check_input_file(path: Path) -> dict[str, Any]:
    """A batch input file: one JSON object a line with a unique `custom_id`, `method` POST, a supported `url`
    and an object `body`. Every problem is reported with its line (400)."""
    problems: list[str] = []
    ids: set[str] = set()
    urls: set[str] = set()
    n = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            n += 1
            try:
                line = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                problems.append(f"Line {lineno}: not JSON ({exc})")
                continue
            if not isinstance(line, dict):
                problems.append(f"Line {lineno}: must be an object with custom_id, method, url and body")
                continue
            custom_id = line.get("custom_id")
            if not isinstance(custom_id, str) or not custom_id:
                problems.append(f'Line {lineno}, key "custom_id": must be a non-empty string')
            elif custom_id in ids:
                problems.append(f'Line {lineno}, key "custom_id": {custom_id!r} is used twice (each must be unique)')
            else:
                ids.add(custom_id)
            if line.get("method") != "POST":
                problems.append(f'Line {lineno}, key "method": must be "POST", got {line.get("method")!r}')
            if line.get("url") not in ENDPOINTS:
                problems.append(f'Line {lineno}, key "url": {line.get("url")!r} is not one of {", ".join(ENDPOINTS)}')
            else:
                urls.add(line["url"])
            if not isinstance(line.get("body"), dict):
                problems.append(f'Line {lineno}, key "body": must be the request object of the url')
            extra = set(line) - {"custom_id", "method", "url", "body"}
            if extra:
                problems.append(f"Line {lineno}: unknown key(s) {', '.join(sorted(extra))}")
    if n == 0:
        problems.append("File: no requests (one JSON request object a line)")
    if n > MAX_REQUESTS:
        problems.append(f"File: {n} requests, at most {MAX_REQUESTS} are allowed in one batch")
    if problems:
        more = f" ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise APIError(
            400,
            f"Invalid batch input file: {len(problems)} error(s). " + "; ".join(problems[:20]) + more,
            param="file",
            code="invalid_file_format",
        )
    return {"format": "batch", "requests": n, "urls": sorted(urls)}


def create_batch(
    svc,
    project_id: str,
    *,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    metadata: dict[str, str] | None,
) -> Batch:
    if endpoint not in ENDPOINTS:
        raise APIError(400, f"endpoint must be one of {', '.join(ENDPOINTS)}, got {endpoint!r}.", param="endpoint")
    if completion_window not in WINDOW_S:
        raise APIError(
            400,
            f"completion_window must be '24h' (OpenAI's only value), got {completion_window!r}.",
            param="completion_window",
        )
    row = files.get_file(svc.store, project_id, input_file_id, param="input_file_id")
    if row.purpose != "batch":
        raise APIError(
            400,
            f"File {input_file_id} has purpose '{row.purpose}'; a batch's input file is uploaded with purpose 'batch'.",
            param="input_file_id",
        )
    urls = (row.validation or {}).get("urls") or []
    if any(u != endpoint for u in urls):
        raise APIError(
            400,
            f"File {input_file_id} has requests for {', '.join(urls)}; every line's url must be the batch's "
            f"endpoint {endpoint}.",
            param="endpoint",
        )
    created = now()
    batch = Batch(
        id=new_id("batch_"),
        project_id=project_id,
        endpoint=endpoint,
        input_file_id=input_file_id,
        completion_window=completion_window,
        status="validating",
        request_counts={"total": (row.validation or {}).get("requests", 0), "completed": 0, "failed": 0},
        user_metadata=metadata,
        created_at=created,
        expires_at=created + WINDOW_S[completion_window],
    )
    with svc.store.session() as s:
        s.add(batch)
    return batch


def get_batch(store, project_id: str, batch_id: str) -> Batch:
    with store.session() as s:
        row = s.get(Batch, batch_id)
    if row is None or row.project_id != project_id:
        raise not_found("batch", batch_id, "batch_id")
    return row


def list_batches(store, project_id: str, after: str | None, limit: int) -> tuple[list[Batch], bool]:
    with store.session() as s:
        query = select(Batch).where(Batch.project_id == project_id).order_by(Batch.created_at.desc(), Batch.id.desc())
        rows = list(s.scalars(query))
    if after:
        ids = [b.id for b in rows]
        rows = rows[ids.index(after) + 1 :] if after in ids else rows
    return rows[:limit], len(rows) > limit


def cancel_batch(store, project_id: str, batch_id: str) -> Batch:
    """in progress -> cancelling (the runner stops and writes what was answered) -> cancelled."""
    row = get_batch(store, project_id, batch_id)
    if row.status in DONE or row.status == "finalizing":
        raise APIError(
            409, f"Batch {batch_id} cannot be cancelled: it is {row.status}.", param="batch_id", code="invalid_state"
        )
    with store.session() as s:
        s.execute(
            update(Batch)
            .where(Batch.id == batch_id, Batch.status.in_(("validating", "in_progress")))
            .values(status="cancelling", cancelling_at=now())
        )
    return get_batch(store, project_id, batch_id)


def batch_object(b: Batch) -> dict[str, Any]:
    """OpenAI's Batch; times and files not reached yet are left out (the spec has no null for them)."""
    out: dict[str, Any] = {
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint,
        "input_file_id": b.input_file_id,
        "completion_window": b.completion_window,
        "status": b.status,
        "created_at": b.created_at,
        "expires_at": b.expires_at,
        "request_counts": b.request_counts,
        "metadata": b.user_metadata or {},
    }
    for key in (
        "output_file_id",
        "error_file_id",
        "in_progress_at",
        "finalizing_at",
        "completed_at",
        "failed_at",
        "expired_at",
        "cancelling_at",
        "cancelled_at",
    ):
        if getattr(b, key) is not None:
            out[key] = getattr(b, key)
    if b.errors:
        out["errors"] = b.errors
    return out


class _Unwatched:
    """The `request` a route gets for a batch line: 'disconnected' once the batch is cancelled or expired,
    so a line in the engine stops at its next token as an online request does when its client goes."""

    def __init__(self, stopped: asyncio.Event) -> None:
        self.stopped = stopped

    async def is_disconnected(self) -> bool:
        return self.stopped.is_set()


class BatchRunner:
    """One asyncio task in the API process that answers batches, oldest first."""

    def __init__(self, services) -> None:
        self.svc = services
        self.id = new_id("runner_", 8)
        self.task: asyncio.Task | None = None
        self.wake = asyncio.Event()

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    def poke(self) -> None:
        self.wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                batch_id = await asyncio.to_thread(self._next)
                if batch_id is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), timeout=2.0)
                    self.wake.clear()
                    continue
                await self.run(batch_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # a database hiccup: log it and look again
                log.exception("batch runner")
                await asyncio.sleep(1.0)

    def _next(self) -> str | None:
        """Claim the oldest batch nobody answers: new, or left by an API process whose lease ran out (several
        API processes may share the database; a compare-and-set UPDATE makes one of them the owner)."""
        stale = time.time() - LEASE_S
        with self.svc.store.session() as s:
            candidates = list(
                s.scalars(
                    select(Batch.id)
                    .where(Batch.status.in_(ACTIVE), or_(Batch.runner_id.is_(None), Batch.heartbeat_at < stale))
                    .order_by(Batch.created_at, Batch.id)
                    .limit(5)
                )
            )
        for batch_id in candidates:
            with self.svc.store.session() as s:
                claimed = s.execute(
                    update(Batch)
                    .where(
                        Batch.id == batch_id,
                        Batch.status.in_(ACTIVE),
                        or_(Batch.runner_id.is_(None), Batch.heartbeat_at < stale),
                    )
                    .values(runner_id=self.id, heartbeat_at=time.time())
                ).rowcount
            if claimed:
                return batch_id
        return None

    def _set(self, batch_id: str, **values: Any) -> None:
        with self.svc.store.session() as s:
            s.execute(update(Batch).where(Batch.id == batch_id).values(**values))

    def _status(self, batch_id: str) -> str:
        with self.svc.store.session() as s:
            return s.get(Batch, batch_id).status

    async def run(self, batch_id: str) -> None:
        with self.svc.store.session() as s:
            batch = s.get(Batch, batch_id)
            project = s.get(Project, batch.project_id)
        if batch.status == "cancelling":
            await asyncio.to_thread(self._set, batch_id, status="cancelled", cancelled_at=now())
            return
        who = Principal(project_id=batch.project_id, project_name=project.name, key_id="batch")
        try:
            input_file = files.get_file(self.svc.store, batch.project_id, batch.input_file_id)
            local = files.local_copy(self.svc.settings, input_file)  # from the shared storage
            lines = [json.loads(raw) for raw in local.read_bytes().splitlines() if raw.strip()]
        except Exception as exc:  # the input file was deleted or expired since the batch was created
            err = as_api_error(exc, f"batch {batch_id}")
            errors = {"object": "list", "data": [{"code": "input_file_unavailable", "message": err.message}]}
            await asyncio.to_thread(self._set, batch_id, status="failed", failed_at=now(), errors=errors)
            return
        await asyncio.to_thread(self._set, batch_id, status="in_progress", in_progress_at=batch.in_progress_at or now())
        stopped = asyncio.Event()
        results: list[dict[str, Any] | None] = [None] * len(lines)
        counts = {"total": len(lines), "completed": 0, "failed": 0}
        queue = list(enumerate(lines))

        async def worker() -> None:
            while queue and not stopped.is_set():
                i, line = queue.pop(0)
                answer = await self._answer(line, who, stopped)
                if stopped.is_set():  # cut short by the cancel or the expiry: not an answer
                    return
                results[i] = answer
                counts["completed" if answer["response"]["status_code"] == 200 else "failed"] += 1

        finished = asyncio.Event()

        async def watch() -> None:  # progress to the row; cancel and expiry from it
            while not finished.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(finished.wait(), timeout=0.5)
                status = await asyncio.to_thread(self._status, batch_id)
                await asyncio.to_thread(self._set, batch_id, request_counts=dict(counts), heartbeat_at=time.time())
                if status == "cancelling" or now() >= batch.expires_at:
                    stopped.set()

        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(worker() for _ in range(min(CONCURRENCY, len(lines)) or 1)))
        finished.set()
        await watcher  # its last write is done before the final counts are
        cancelled = stopped.is_set()
        stopped.set()
        final = await asyncio.to_thread(self._status, batch_id)
        if not cancelled:
            await asyncio.to_thread(self._set, batch_id, status="finalizing", finalizing_at=now())
        out_ids = await asyncio.to_thread(self._write_files, batch, [r for r in results if r is not None])
        if final == "cancelling":
            end = {"status": "cancelled", "cancelled_at": now()}
        elif cancelled:
            end = {"status": "expired", "expired_at": now()}
        else:
            end = {"status": "completed", "completed_at": now()}
        await asyncio.to_thread(self._set, batch_id, request_counts=counts, **out_ids, **end)

    async def _answer(self, line: dict[str, Any], who: Principal, stopped: asyncio.Event) -> dict[str, Any]:
        from tuneforge.serve.api import inference

        request_id = new_id("req_", 12)
        body = dict(line["body"])
        try:
            if body.get("stream"):
                raise APIError(400, "stream is not supported in a batch request.", param="body.stream")
            if line["url"] == "/v1/chat/completions":
                answer = await inference.chat(
                    body=_parse(inference.ChatRequest, body), request=_Unwatched(stopped), who=who, svc=self.svc
                )
            elif line["url"] == "/v1/completions":
                answer = await inference.completions(
                    body=_parse(inference.CompletionRequest, body), request=_Unwatched(stopped), who=who, svc=self.svc
                )
            else:
                answer = await inference.embeddings(
                    body=_parse(inference.EmbeddingRequest, body), who=who, svc=self.svc
                )
            response = {"status_code": 200, "request_id": request_id, "body": answer}
        except Exception as exc:
            err = as_api_error(exc, f"a batch request ({line['custom_id']})")
            response = {"status_code": err.status, "request_id": request_id, "body": err.body()}
        return {"id": new_id("batch_req_", 12), "custom_id": line["custom_id"], "response": response, "error": None}

    def _write_files(self, batch: Batch, results: list[dict[str, Any]]) -> dict[str, str]:
        ok = [r for r in results if r["response"]["status_code"] == 200]
        bad = [r for r in results if r["response"]["status_code"] != 200]
        out: dict[str, str] = {}
        for key, rows, purpose in (("output_file_id", ok, "batch_output"), ("error_file_id", bad, "batch_output")):
            if rows:
                name = f"{batch.id}_{'output' if key == 'output_file_id' else 'error'}.jsonl"
                content = "".join(json.dumps(r) + "\n" for r in rows).encode()
                row = files.store_result_file(
                    self.svc.store,
                    self.svc.settings.files_dir,
                    batch.project_id,
                    name,
                    content,
                    purpose=purpose,
                    expires_after_s=files.BATCH_EXPIRES_S,
                    storage=self.svc.settings.storage(),
                )
                out[key] = row.id
        return out


def _parse(model, body: dict[str, Any]):
    """A line's body as its route's request model; a wrong field is the 400 an online request gets."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise APIError(400, message, param=param) from None
