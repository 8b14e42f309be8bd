"""Multipart uploads (OpenAI's /v1/uploads): a large file sent as parts, then completed into one File.

An upload is created with the file's name, purpose and total size; parts (each up to 64 MB) are
stored beside it as they arrive, in any order and concurrently; `complete` joins the parts in the
order of `part_ids`, checks the size and the optional md5, and then checks and records the file as
`/v1/files` does. An upload is pending for an hour (OpenAI's lifetime), then expired.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import select

from tuneforge.serve import files
from tuneforge.serve.api.errors import APIError, not_found
from tuneforge.serve.db import Store
from tuneforge.serve.ids import new_id, now
from tuneforge.serve.storage import Storage
from tuneforge.serve.tables import File, Upload, UploadPart

UPLOAD_LIFETIME_S = 3600
PART_LIMIT = 64 * 1024 * 1024  # OpenAI's largest part


def upload_dir(files_dir: Path, project_id: str, upload_id: str) -> Path:
    return files_dir / project_id / "uploads" / upload_id


def create_upload(
    store: Store,
    project_id: str,
    *,
    filename: str,
    purpose: str,
    size: int,
    mime_type: str,
    expires_after_s: int | None,
    limit: int,
) -> Upload:
    files.check_purpose(purpose)
    if size > limit:
        raise APIError(
            413,
            f"bytes={size} is larger than the limit of {limit} bytes (set TUNEFORGE_MAX_UPLOAD_MB to raise it).",
            param="bytes",
            code="file_too_large",
        )
    created = now()
    row = Upload(
        id=new_id("upload_"),
        project_id=project_id,
        filename=filename,
        purpose=purpose,
        bytes=size,
        mime_type=mime_type,
        status="pending",
        file_id=None,
        file_expires_after=expires_after_s,
        created_at=created,
        expires_at=created + UPLOAD_LIFETIME_S,
    )
    with store.session() as s:
        s.add(row)
    return row


def get_upload(store: Store, project_id: str, upload_id: str) -> Upload:
    with store.session() as s:
        row = s.get(Upload, upload_id)
    if row is None or row.project_id != project_id:
        raise not_found("Upload", upload_id, "upload_id")
    if row.status == "pending" and row.expires_at <= now():
        row.status = "expired"
    return row


def _pending(row: Upload, action: str) -> None:
    if row.status != "pending":
        raise APIError(
            409,
            f"Cannot {action} upload {row.id}: it is {row.status}, not pending.",
            param="upload_id",
            code="upload_not_pending",
        )


def add_part(store: Store, files_dir: Path, project_id: str, upload_id: str, src: BinaryIO) -> UploadPart:
    row = get_upload(store, project_id, upload_id)
    _pending(row, "add a part to")
    part_id = new_id("part_")
    path = upload_dir(files_dir, project_id, upload_id) / part_id
    try:
        size = files.save_upload(src, path, min(PART_LIMIT, row.bytes))
    except APIError as exc:
        exc.param = "data"
        exc.message = f"A part may hold at most {min(PART_LIMIT, row.bytes)} bytes (64 MB, or the upload's bytes)."
        raise
    part = UploadPart(id=part_id, upload_id=upload_id, bytes=size, path=str(path), created_at=now())
    with store.session() as s:
        s.add(part)
    return part


def complete(
    store: Store,
    files_dir: Path,
    project_id: str,
    upload_id: str,
    part_ids: list[str],
    md5: str | None,
    *,
    storage: Storage,
) -> Upload:
    row = get_upload(store, project_id, upload_id)
    _pending(row, "complete")
    with store.session() as s:
        parts = {p.id: p for p in s.scalars(select(UploadPart).where(UploadPart.upload_id == upload_id))}
    for i, part_id in enumerate(part_ids):
        if part_id not in parts:
            raise APIError(400, f"part_ids[{i}]: {part_id} is not a part of upload {upload_id}.", param="part_ids")
    if len(set(part_ids)) != len(part_ids):
        raise APIError(400, "part_ids lists a part more than once.", param="part_ids")
    total = sum(parts[p].bytes for p in part_ids)
    if total != row.bytes:
        raise APIError(
            400,
            f"The parts hold {total} bytes but the upload was created with bytes={row.bytes}.",
            param="part_ids",
            code="size_mismatch",
        )
    file_id = new_id("file-")
    dest = files_dir / project_id / f"{file_id}{files._suffix(row.filename)}"
    digest = hashlib.md5(usedforsecurity=False)
    with dest.open("wb") as out:
        for part_id in part_ids:
            with open(parts[part_id].path, "rb") as src:
                while chunk := src.read(files.CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
    if md5 is not None and digest.hexdigest() != md5.lower():
        dest.unlink()
        raise APIError(
            400,
            f"md5 mismatch: the joined parts have md5 {digest.hexdigest()}, the request said {md5}.",
            param="md5",
            code="md5_mismatch",
        )
    file_row = files.register_file(
        store, project_id, file_id, row.filename, row.purpose, dest, total, row.file_expires_after, storage=storage
    )
    with store.session() as s:
        upload = s.get(Upload, upload_id)
        upload.status, upload.file_id = "completed", file_row.id
        for part in parts.values():  # the joined file holds them now
            s.delete(s.get(UploadPart, part.id))
    shutil.rmtree(upload_dir(files_dir, project_id, upload_id), ignore_errors=True)
    return get_upload(store, project_id, upload_id)


def cancel(store: Store, files_dir: Path, project_id: str, upload_id: str) -> Upload:
    row = get_upload(store, project_id, upload_id)
    _pending(row, "cancel")
    with store.session() as s:
        s.get(Upload, upload_id).status = "cancelled"
    shutil.rmtree(upload_dir(files_dir, project_id, upload_id), ignore_errors=True)
    return get_upload(store, project_id, upload_id)


def upload_object(store: Store, row: Upload) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row.id,
        "object": "upload",
        "bytes": row.bytes,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "filename": row.filename,
        "purpose": row.purpose,
        "status": row.status,
        "file": None,
    }
    if row.file_id is not None:
        with store.session() as s:
            f = s.get(File, row.file_id)
        out["file"] = files.file_object(f) if f is not None else None
    return out


def part_object(part: UploadPart) -> dict[str, Any]:
    return {"id": part.id, "object": "upload.part", "created_at": part.created_at, "upload_id": part.upload_id}
