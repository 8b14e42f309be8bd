"""Drift reports per model and the feedback loop (corrected answers -> training file)."""

from __future__ import annotations

import io
import json
import random
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select

from tuneforge.data.readers import read_examples
from tuneforge.data.types import Conversation
from tuneforge.serve import drift, files
from tuneforge.serve.api.checks import refuse_unencodable
from tuneforge.serve.api.deps import Services, principal, services
from tuneforge.serve.api.errors import APIError, declared
from tuneforge.serve.api.inference import chat_messages
from tuneforge.serve.api.models import require_model
from tuneforge.serve.ids import new_id, now
from tuneforge.serve.keys import Principal
from tuneforge.serve.tables import Feedback, File, Job, RequestLog

router = APIRouter(prefix="/v1")
SAMPLE = 300


def reference_prompts(svc: Services, who: Principal, model_id: str) -> list[str]:
    """User turns of the fine-tuned model's training file, joined like live prompts are."""
    ref = require_model(svc, who, model_id)
    if ref.kind in ("base", "embedding"):
        raise APIError(
            400,
            f"'{model_id}' is not a fine-tuned model: drift is measured against a fine-tuned model's training data.",
            param="model",
        )
    with svc.store.session() as s:
        job = s.scalar(select(Job).where(Job.fine_tuned_model == model_id))
        train_file = s.get(File, job.training_file) if job else None
    if train_file is None:
        raise APIError(
            409,
            f"The training file of '{model_id}' was deleted; drift needs it as the reference.",
            param="model",
            code="reference_missing",
        )
    texts = [
        "\n".join(m.content for m in ex.prompt_messages if m.role == "user")
        for ex in read_examples(files.local_copy(svc.settings, train_file))
        if isinstance(ex, Conversation)
    ]
    texts = [t for t in texts if t]
    return random.Random(0).sample(texts, min(SAMPLE, len(texts)))


def live_prompts(svc: Services, who: Principal, model_id: str) -> list[str]:
    with svc.store.session() as s:
        rows = s.scalars(
            select(RequestLog.prompt_text)
            .where(RequestLog.project_id == who.project_id, RequestLog.model == model_id, RequestLog.prompt_text != "")
            .order_by(RequestLog.seq.desc())
            .limit(SAMPLE)
        )
        return list(rows)


@router.get("/monitoring/drift")
async def drift_all(who: Principal = Depends(principal), svc: Services = Depends(services)) -> dict:
    with svc.store.session() as s:
        models = sorted(
            set(
                s.scalars(
                    select(RequestLog.model).where(
                        RequestLog.project_id == who.project_id, RequestLog.model.startswith("ft:")
                    )
                )
            )
        )
    return {"object": "list", "data": [await drift_one(m, who, svc) for m in models]}


@router.get("/monitoring/drift/{model_id:path}", responses=declared(409))
async def drift_one(model_id: str, who: Principal = Depends(principal), svc: Services = Depends(services)) -> dict:
    reference = await run_in_threadpool(reference_prompts, svc, who, model_id)
    live = live_prompts(svc, who, model_id)
    embed = lambda texts: svc.engine.embed_sync(texts)[0]  # noqa: E731  (runs on the engine thread)
    report = await run_in_threadpool(drift.compare, model_id, reference, live, embed, svc.settings.drift_threshold)
    return {"object": "drift_report", **report.to_dict()}


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    messages: list[dict] = Field(min_length=1, description="The prompt conversation (without the answer).")
    completion: str | None = Field(None, description="What the model answered.")
    correction: str = Field(min_length=1, description="The answer it should have given: the new training target.")
    rating: int | None = Field(None, ge=-1, le=5)

    @model_validator(mode="before")
    @classmethod
    def text_is_unicode(cls, data: Any) -> Any:
        return refuse_unencodable(data)


def _feedback_object(f: Feedback) -> dict:
    return {
        "object": "feedback",
        "id": f.id,
        "model": f.model,
        "messages": f.messages,
        "completion": f.completion,
        "correction": f.correction,
        "rating": f.rating,
        "created_at": f.created_at,
    }


@router.post("/feedback")
def create_feedback(body: FeedbackIn, who: Principal = Depends(principal), svc: Services = Depends(services)) -> dict:
    require_model(svc, who, body.model)
    row = Feedback(
        id=new_id("fb-"),
        project_id=who.project_id,
        model=body.model,
        messages=chat_messages(body.messages),
        completion=body.completion,
        correction=body.correction,
        rating=body.rating,
        created_at=now(),
    )
    with svc.store.session() as s:
        s.add(row)
    return _feedback_object(row)


@router.get("/feedback")
def list_feedback(
    model: str | None = None, limit: int = 100, who: Principal = Depends(principal), svc: Services = Depends(services)
) -> dict:
    with svc.store.session() as s:
        query = (
            select(Feedback)
            .where(Feedback.project_id == who.project_id)
            .order_by(Feedback.created_at.desc(), Feedback.id)
        )
        if model:
            query = query.where(Feedback.model == model)
        rows = list(s.scalars(query.limit(max(1, min(limit, 10000)))))
    return {"object": "list", "data": [_feedback_object(f) for f in rows]}


class ExportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    filename: str = "feedback.jsonl"


@router.post("/feedback/export")
def export_feedback(body: ExportIn, who: Principal = Depends(principal), svc: Services = Depends(services)) -> dict:
    """Corrected answers as a chat JSONL training file (validated like any upload)."""
    with svc.store.session() as s:
        query = select(Feedback).where(Feedback.project_id == who.project_id).order_by(Feedback.created_at, Feedback.id)
        if body.model:
            query = query.where(Feedback.model == body.model)
        rows = list(s.scalars(query))
    if not rows:
        raise APIError(400, "There is no feedback to export.", param="model", code="no_feedback")
    lines = [json.dumps({"messages": [*f.messages, {"role": "assistant", "content": f.correction}]}) for f in rows]
    data = io.BytesIO(("\n".join(lines) + "\n").encode())
    row = files.create_file(
        svc.store,
        svc.settings.files_dir,
        who.project_id,
        body.filename,
        "fine-tune",
        data,
        svc.settings.max_upload_bytes,
        storage=svc.settings.storage(),
    )
    return files.file_object(row)
