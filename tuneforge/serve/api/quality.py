"""Drift reports per model and the feedback loop (corrected answers -> training file)."""

from __future__ import annotations

import io
import json
import random
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select

from tuneforge.data.readers import read_examples
from tuneforge.data.types import Conversation
from tuneforge.serve import drift, files
from tuneforge.serve.api.checks import refuse_unencodable
from tuneforge.serve.api.deps import Services, principal, services
from tuneforge.serve.api.errors import APIError, declared, not_found
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


REVIEW_STATUSES = ("pending", "accepted", "rejected")
ReviewStatus = Literal["pending", "accepted", "rejected"]


def _feedback_object(f: Feedback) -> dict:
    return {
        "object": "feedback",
        "id": f.id,
        "model": f.model,
        "messages": f.messages,
        "completion": f.completion,
        "correction": f.correction,  # as it was sent
        "edited_correction": f.edited_correction,  # the reviewer's version, or null
        "rating": f.rating,
        "status": f.status,
        "reviewed_at": f.reviewed_at,
        "created_at": f.created_at,
    }


def training_target(f: Feedback) -> str:
    """The answer a training file learns: the reviewer's edit when there is one, else the correction as sent."""
    return f.edited_correction if f.edited_correction is not None else f.correction


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
        status="pending",
    )
    with svc.store.session() as s:
        s.add(row)
    return _feedback_object(row)


@router.get("/feedback")
def list_feedback(
    model: str | None = None,
    status: ReviewStatus | None = Query(None, description="Only feedback in this review state (the queue: pending)."),
    limit: int = Query(100, ge=1, le=10000),
    who: Principal = Depends(principal),
    svc: Services = Depends(services),
) -> dict:
    with svc.store.session() as s:
        query = (
            select(Feedback)
            .where(Feedback.project_id == who.project_id)
            .order_by(Feedback.created_at.desc(), Feedback.id)
        )
        if model:
            query = query.where(Feedback.model == model)
        if status:
            query = query.where(Feedback.status == status)
        rows = list(s.scalars(query.limit(limit)))
    return {"object": "list", "data": [_feedback_object(f) for f in rows]}


class ExportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, description="Only feedback on this model.")
    ids: list[str] | None = Field(
        None, min_length=1, description="Only these feedback items, in this order (each must be the project's)."
    )
    include: list[ReviewStatus] = Field(
        default_factory=lambda: ["accepted"],
        min_length=1,
        description="The review states exported; the others are skipped and counted. Default: accepted only.",
    )
    filename: str = Field("feedback.jsonl", min_length=1, max_length=200)


@router.post("/feedback/export")
def export_feedback(body: ExportIn, who: Principal = Depends(principal), svc: Services = Depends(services)) -> dict:
    """Reviewed corrections as a chat JSONL training file (validated like any upload): the accepted ones by
    default, each with the reviewer's edit when there is one. The File object says how many were exported and
    how many the review states skipped."""
    with svc.store.session() as s:
        query = select(Feedback).where(Feedback.project_id == who.project_id).order_by(Feedback.created_at, Feedback.id)
        if body.model:
            query = query.where(Feedback.model == body.model)
        if body.ids is not None:
            query = query.where(Feedback.id.in_(body.ids))
        rows = list(s.scalars(query))
    if body.ids is not None:
        by_id = {f.id: f for f in rows}
        missing = [i for i in body.ids if i not in by_id]
        if missing:  # another project's id reads as missing
            where = " on model " + body.model if body.model else ""
            raise APIError(404, f"No such feedback object{where}: {missing[0]}", param="ids", code="not_found")
        rows = [by_id[i] for i in dict.fromkeys(body.ids)]
    if not rows:
        raise APIError(400, "There is no feedback to export.", param="model", code="no_feedback")
    chosen = [f for f in rows if f.status in body.include]
    skipped = {
        status: sum(f.status == status for f in rows) for status in REVIEW_STATUSES if status not in body.include
    }
    if not chosen:
        counts = ", ".join(f"{n} {status}" for status, n in skipped.items() if n)
        raise APIError(
            400,
            f"No feedback is {' or '.join(body.include)} ({counts}): review the queue first "
            f"(POST /v1/feedback/{{id}} with status accepted), or name the states to export in include.",
            param="include",
            code="no_feedback",
        )
    lines = [
        json.dumps({"messages": [*f.messages, {"role": "assistant", "content": training_target(f)}]}) for f in chosen
    ]
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
    return {
        **files.file_object(row),
        "exported": len(chosen),
        "skipped": sum(skipped.values()),
        "skipped_by_status": skipped,
    }


class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: ReviewStatus | None = Field(
        None, description="accepted (exported), rejected (skipped), or pending (back in the queue)."
    )
    correction: str | None = Field(
        None,
        description="The reviewer's version of the answer, kept beside the original correction; null drops the edit.",
    )

    @model_validator(mode="before")
    @classmethod
    def text_is_unicode(cls, data: Any) -> Any:
        return refuse_unencodable(data)


def _check_review(body: ReviewIn) -> None:
    given = body.model_fields_set & {"status", "correction"}
    if not given:
        raise APIError(
            400, "Nothing to review: give status (pending, accepted or rejected), correction, or both.", param="status"
        )
    if "status" in given and body.status is None:
        raise APIError(400, "status: must be pending, accepted or rejected (not null).", param="status")
    if body.correction is not None and not body.correction.strip():
        raise APIError(
            400, "correction: empty; send the reviewed answer, or null to drop the edit.", param="correction"
        )


@router.post("/feedback/{feedback_id}", responses=declared(400, 404))
def review_feedback(
    feedback_id: str, body: ReviewIn, who: Principal = Depends(principal), svc: Services = Depends(services)
) -> dict:
    """Review a stored correction: accept, reject or return it to the queue, and/or edit the answer. The original
    correction is kept; an edit equal to it is no edit."""
    _check_review(body)
    with svc.store.session() as s:
        row = s.get(Feedback, feedback_id)
        if row is None or row.project_id != who.project_id:
            raise not_found("feedback", feedback_id, "feedback_id")
        if body.status is not None:
            row.status = body.status
        if "correction" in body.model_fields_set:
            row.edited_correction = None if body.correction in (None, row.correction) else body.correction
        row.reviewed_at = now()
        s.flush()
        return _feedback_object(row)
