"""/v1/files: upload (multipart), list, retrieve, content, delete."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from tuneforge.serve import files
from tuneforge.serve.api.deps import Services, principal, services
from tuneforge.serve.api.errors import APIError
from tuneforge.serve.keys import Principal

router = APIRouter(prefix="/v1/files")
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and the purpose field around the file itself


def _refuse_oversized(request: Request) -> None:
    """Refuse by Content-Length before the body is read (the multipart parser would spool it all)."""
    limit = request.app.state.services.settings.max_upload_bytes
    if int(request.headers.get("content-length") or 0) > limit + MULTIPART_OVERHEAD:
        raise APIError(
            413,
            f"File is larger than the limit of {limit} bytes (set TUNEFORGE_MAX_UPLOAD_MB to raise it).",
            param="file",
            code="file_too_large",
        )


@router.post("", dependencies=[Depends(principal), Depends(_refuse_oversized)])
async def upload(
    file: UploadFile,
    purpose: str = Form(...),
    expires_anchor: str | None = Form(None, alias="expires_after[anchor]"),
    expires_seconds: str | None = Form(None, alias="expires_after[seconds]"),
    who: Principal = Depends(principal),
    svc: Services = Depends(services),
) -> dict:
    files.check_purpose(purpose)  # before the file is stored
    given = None if expires_anchor is None and expires_seconds is None else {"anchor": expires_anchor}
    if given is not None:
        given["seconds"] = expires_seconds
    expires_after_s = files.expires_seconds(given, purpose)
    row = await run_in_threadpool(
        files.create_file,
        svc.store,
        svc.settings.files_dir,
        who.project_id,
        file.filename or "upload.jsonl",
        purpose,
        file.file,
        svc.settings.max_upload_bytes,
        expires_after_s,
        storage=svc.settings.storage(),
    )
    return files.file_object(row)


@router.get("")
def list_files(
    purpose: str | None = None,
    after: str | None = None,
    limit: int = 10000,
    order: str = "desc",
    who: Principal = Depends(principal),
    svc: Services = Depends(services),
) -> dict:
    rows, more = files.list_files(svc.store, who.project_id, purpose, after, max(1, min(limit, 10000)), order)
    data = [files.file_object(f) for f in rows]
    return {
        "object": "list",
        "data": data,
        "has_more": more,
        "first_id": data[0]["id"] if data else "",  # OpenAI's list requires strings: empty, not null
        "last_id": data[-1]["id"] if data else "",
    }


@router.get("/{file_id}")
def retrieve(file_id: str, who: Principal = Depends(principal), svc: Services = Depends(services)) -> dict:
    return files.file_object(files.get_file(svc.store, who.project_id, file_id))


@router.get("/{file_id}/content")
def content(file_id: str, who: Principal = Depends(principal), svc: Services = Depends(services)) -> FileResponse:
    row = files.get_file(svc.store, who.project_id, file_id)
    path = files.local_copy(svc.settings, row)  # from the shared storage
    return FileResponse(path, media_type="application/octet-stream", filename=row.filename)


@router.delete("/{file_id}")
def delete(file_id: str, who: Principal = Depends(principal), svc: Services = Depends(services)) -> dict:
    files.delete_file(svc.store, who.project_id, file_id, storage=svc.settings.storage())
    return {"id": file_id, "object": "file", "deleted": True}
