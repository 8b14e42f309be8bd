"""/v1/uploads: create, add a part (multipart `data`), complete into a File, cancel."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from tuneforge.serve import files, uploads
from tuneforge.serve.api.deps import Services, principal, services
from tuneforge.serve.api.errors import declared
from tuneforge.serve.keys import Principal

router = APIRouter(prefix="/v1/uploads")


class ExpiresAfter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    anchor: str
    seconds: int


class CreateUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bytes: int = Field(gt=0, description="The whole file's size; complete checks the parts add up to it.")
    filename: str = Field(min_length=1, max_length=500)
    mime_type: str = Field(min_length=1, max_length=200)
    purpose: str
    expires_after: ExpiresAfter | None = Field(None, description="The File's expiry: created_at + seconds.")


class CompleteUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    part_ids: list[str] = Field(min_length=1, description="The parts, in the order they are joined.")
    md5: str | None = Field(None, description="The joined file's md5 (hex); a mismatch is a 400.")


@router.post("")
def create(body: CreateUpload, who: Principal = Depends(principal), svc: Services = Depends(services)) -> dict:
    given = body.expires_after.model_dump() if body.expires_after else None
    row = uploads.create_upload(
        svc.store,
        who.project_id,
        filename=body.filename,
        purpose=body.purpose,
        size=body.bytes,
        mime_type=body.mime_type,
        expires_after_s=files.expires_seconds(given, body.purpose),
        limit=svc.settings.max_upload_bytes,
    )
    return uploads.upload_object(svc.store, row)


@router.post("/{upload_id}/parts", responses=declared(409))
async def add_part(
    upload_id: str, data: UploadFile, who: Principal = Depends(principal), svc: Services = Depends(services)
) -> dict[str, Any]:
    part = await run_in_threadpool(
        uploads.add_part, svc.store, svc.settings.files_dir, who.project_id, upload_id, data.file
    )
    return uploads.part_object(part)


@router.post("/{upload_id}/complete", responses=declared(409))
def complete(
    upload_id: str, body: CompleteUpload, who: Principal = Depends(principal), svc: Services = Depends(services)
) -> dict:
    row = uploads.complete(
        svc.store,
        svc.settings.files_dir,
        who.project_id,
        upload_id,
        body.part_ids,
        body.md5,
        storage=svc.settings.storage(),
    )
    return uploads.upload_object(svc.store, row)


@router.post("/{upload_id}/cancel", responses=declared(409))
def cancel(upload_id: str, who: Principal = Depends(principal), svc: Services = Depends(services)) -> dict:
    row = uploads.cancel(svc.store, svc.settings.files_dir, who.project_id, upload_id)
    return uploads.upload_object(svc.store, row)
