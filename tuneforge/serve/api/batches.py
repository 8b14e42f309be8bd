"""/v1/batches: create over an uploaded batch file, retrieve, list, cancel (OpenAI's Batch API)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from tuneforge.serve import batches
from tuneforge.serve.api.deps import Services, principal, services
from tuneforge.serve.api.errors import declared
from tuneforge.serve.keys import Principal

router = APIRouter(prefix="/v1/batches")


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_file_id: str = Field(description="A file uploaded with purpose 'batch'.")
    endpoint: str = Field(description="/v1/chat/completions, /v1/completions or /v1/embeddings.")
    completion_window: str = Field(description="'24h': the batch expires (what is answered is kept) after it.")
    metadata: dict[str, str] | None = None
    output_expires_after: dict | None = Field(None, description="The output files' expiry (default 30 days).")


@router.post("")
def create(
    body: CreateBatch, request: Request, who: Principal = Depends(principal), svc: Services = Depends(services)
) -> dict:
    batch = batches.create_batch(
        svc,
        who.project_id,
        input_file_id=body.input_file_id,
        endpoint=body.endpoint,
        completion_window=body.completion_window,
        metadata=body.metadata,
    )
    runner = getattr(request.app.state, "batch_runner", None)
    if runner is not None:
        runner.poke()
    return batches.batch_object(batch)


@router.get("")
def list_batches(
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
    who: Principal = Depends(principal),
    svc: Services = Depends(services),
) -> dict:
    rows, more = batches.list_batches(svc.store, who.project_id, after, limit)
    data = [batches.batch_object(b) for b in rows]
    out = {"object": "list", "data": data, "has_more": more}
    if data:  # optional in OpenAI's list: left out, never null, when the page is empty
        out.update(first_id=data[0]["id"], last_id=data[-1]["id"])
    return out


@router.get("/{batch_id}")
def retrieve(batch_id: str, who: Principal = Depends(principal), svc: Services = Depends(services)) -> dict:
    return batches.batch_object(batches.get_batch(svc.store, who.project_id, batch_id))


@router.post("/{batch_id}/cancel", responses=declared(409))
def cancel(batch_id: str, who: Principal = Depends(principal), svc: Services = Depends(services)) -> dict:
    return batches.batch_object(batches.cancel_batch(svc.store, who.project_id, batch_id))
