"""Uploaded files: kept in the shared storage under `files/<project>/<file id><suffix>`, described by rows of
`files` whose `path` is that storage key (never a host path: any machine of the team reads the file).

An upload is written and checked on the API machine's disk first (`<data_dir>/files/...`), then put into the
storage; with the default storage (the data dir itself) it is already in place. Readers get a local path with
`local_copy` (the stored file on a shared folder, a cached copy from a bucket).

Fine-tune uploads are validated with `tuneforge.data.validate.validate_file`; a file with
errors is refused and every problem is reported with its line, as OpenAI does. A file whose only error is
records ending in a user turn is checked again as RFT prompts (format rft: reinforcement jobs only).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import select

from tuneforge.data.validate import validate_file
from tuneforge.serve.api.errors import APIError, not_found
from tuneforge.serve.db import Store
from tuneforge.serve.ids import new_id, now
from tuneforge.serve.storage import FilesystemStorage, Storage
from tuneforge.serve.tables import File

CHUNK = 1 << 20


def save_upload(src: BinaryIO, dest: Path, limit: int) -> int:
    """Copy an upload to `dest` in chunks, refusing it once it passes `limit` bytes."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with dest.open("wb") as out:
        while chunk := src.read(CHUNK):
            size += len(chunk)
            if size > limit:
                out.close()
                dest.unlink()
                raise APIError(
                    413,
                    f"File is larger than the limit of {limit} bytes (set TUNEFORGE_MAX_UPLOAD_MB to raise it).",
                    param="file",
                    code="file_too_large",
                )
            out.write(chunk)
    return size


def validation_error(report: Any, filename: str) -> APIError:
    """OpenAI's wording: 'Invalid file format. Line 3, key "messages": ...' for each error."""
    lines = []
    for issue in report.errors[:20]:
        where = f"Line {issue.line}" if issue.line is not None else "File"
        key = f', key "{issue.field}"' if issue.field else ""
        fix = f" ({issue.fix})" if issue.fix else ""
        lines.append(f"{where}{key}: {issue.message}{fix}")
    total = sum(report.error_counts.values())
    more = f" ... and {total - len(lines)} more" if total > len(lines) else ""
    message = f"Invalid file format in {filename}: {total} error(s). " + "; ".join(lines) + more
    details = report.to_dict()
    stored = str(details.get("file") or "")  # the server's copy: its path names the project's folder
    details["file"] = filename
    for issue in details["errors"] + details["warnings"]:
        issue["file"] = filename
    if stored:  # a reader's message may quote the path it read: the client sees its own file name
        message = message.replace(stored, filename)
        details = json.loads(json.dumps(details).replace(json.dumps(stored)[1:-1], json.dumps(filename)[1:-1]))
    return APIError(400, message, param="file", code="invalid_file_format", details=details)


PURPOSES = ("fine-tune", "batch", "user_data")  # what the service stores; batch files are checked as batch input
REFUSED_PURPOSES = {
    "assistants": "tuneforge has no Assistants API",
    "vision": "tuneforge fine-tunes and serves text models only",
    "evals": "tuneforge has no Evals API (evaluate with `tuneforge eval` or a job's `tuneforge.eval` section)",
}
EXPIRES_MIN_S, EXPIRES_MAX_S = 3600, 30 * 24 * 3600  # OpenAI's bounds for expires_after.seconds
BATCH_EXPIRES_S = 30 * 24 * 3600  # OpenAI's default for purpose=batch files


def check_purpose(purpose: str) -> None:
    """A 400 for a purpose the service does not store, saying why and what it does store."""
    if purpose in PURPOSES:
        return
    why = REFUSED_PURPOSES.get(purpose, "it is not one of OpenAI's file purposes")
    raise APIError(
        400,
        f"'{purpose}' is not a supported purpose for uploads: {why}; use one of {', '.join(PURPOSES)}.",
        param="purpose",
        code="invalid_purpose",
    )


def expires_seconds(expires_after: dict[str, Any] | None, purpose: str, param: str = "expires_after") -> int | None:
    """OpenAI's `expires_after` ({"anchor": "created_at", "seconds": 3600..2592000}) as seconds; batch files
    expire after 30 days unless told otherwise, other files never."""
    if expires_after is None:
        return BATCH_EXPIRES_S if purpose == "batch" else None
    anchor, seconds = expires_after.get("anchor"), expires_after.get("seconds")
    if anchor != "created_at":
        raise APIError(400, f"{param}.anchor must be 'created_at', got {anchor!r}.", param=f"{param}.anchor")
    try:
        seconds = int(seconds)
    except (TypeError, ValueError):
        raise APIError(400, f"{param}.seconds must be an integer, got {seconds!r}.", param=f"{param}.seconds") from None
    if not EXPIRES_MIN_S <= seconds <= EXPIRES_MAX_S:
        raise APIError(
            400,
            f"{param}.seconds must be between {EXPIRES_MIN_S} (1 hour) and {EXPIRES_MAX_S} (30 days), got {seconds}.",
            param=f"{param}.seconds",
        )
    return seconds


def create_file(
    store: Store,
    files_dir: Path,
    project_id: str,
    filename: str,
    purpose: str,
    src: BinaryIO,
    limit: int,
    expires_after_s: int | None = None,
    *,
    storage: Storage,
) -> File:
    check_purpose(purpose)
    file_id = new_id("file-")
    path = files_dir / project_id / f"{file_id}{_suffix(filename)}"
    size = save_upload(src, path, limit)
    return register_file(store, project_id, file_id, filename, purpose, path, size, expires_after_s, storage=storage)


def _suffix(filename: str) -> str:
    return Path(filename).suffix.lower()[:10] or ".jsonl"  # the validator detects formats by extension too


def register_file(
    store: Store,
    project_id: str,
    file_id: str,
    filename: str,
    purpose: str,
    path: Path,
    size: int,
    expires_after_s: int | None,
    *,
    storage: Storage,
) -> File:
    """Check a stored upload by its purpose (removing it when refused) and record it as a File.

    Fine-tune files need one valid example here: a small validation file is fine, and the 10-example
    minimum is checked on the training file when a job is created."""
    validation = None
    if purpose == "fine-tune":
        report = validate_file(path, min_examples=1)
        if not report.ok and set(report.to_dict()["error_counts"]) == {"no_assistant"}:  # prompts: RFT JSONL?
            rft = validate_file(path, "rft", min_examples=1)
            report = rft if rft.ok else report
        if not report.ok:
            path.unlink()
            raise validation_error(report, filename)
        validation = _summary(report, filename)
    elif purpose == "batch":
        from tuneforge.serve.batches import check_input_file

        try:
            validation = check_input_file(path)
        except APIError:
            path.unlink()
            raise
    key = _store(storage, path, project_id)
    created = now()
    row = File(
        id=file_id,
        project_id=project_id,
        filename=filename,
        purpose=purpose,
        bytes=size,
        path=key,
        status="processed",
        status_details=None,
        validation=validation,
        created_at=created,
        expires_at=created + expires_after_s if expires_after_s else None,
    )
    with store.session() as s:
        s.add(row)
    return row


def _store(storage: Storage, path: Path, project_id: str) -> str:
    """Put a checked file (`<data_dir>/files/<project>/<name>`) into the storage; its key. With the default
    storage (the data dir itself) the file is in place already."""
    key = f"files/{project_id}/{path.name}"
    if isinstance(storage, FilesystemStorage) and storage.path(key) == path.resolve():
        return key
    storage.put(key, path)
    path.unlink()
    return key


def local_copy(settings, row: File) -> Path:
    """A local path to read a stored file from (`settings`: the ServeSettings naming the storage)."""
    if row.path.startswith("/"):  # a host path the storage-key migration could not convert: this machine only
        return Path(row.path)
    return settings.storage().local_file(row.path, settings.cache_dir)


def _summary(report: Any, filename: str) -> dict[str, Any]:
    d = report.to_dict()
    d["file"] = filename
    d["warnings"] = [{**w, "file": filename} for w in d["warnings"][:50]]
    d.pop("errors")
    return d


def store_result_file(
    store: Store,
    files_dir: Path,
    project_id: str,
    filename: str,
    content: bytes,
    purpose: str = "fine-tune-results",
    expires_after_s: int | None = None,
    *,
    storage: Storage,
) -> File:
    """A file the service writes itself (a job's step metrics CSV, a batch's output)."""
    file_id = new_id("file-")
    path = files_dir / project_id / f"{file_id}{Path(filename).suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    row = File(
        id=file_id,
        project_id=project_id,
        filename=filename,
        purpose=purpose,
        bytes=len(content),
        path=_store(storage, path, project_id),
        status="processed",
        status_details=None,
        validation=None,
        created_at=now(),
    )
    row.expires_at = row.created_at + expires_after_s if expires_after_s else None
    with store.session() as s:
        s.add(row)
    return row


def get_file(store: Store, project_id: str, file_id: str, param: str | None = None) -> File:
    with store.session() as s:
        row = s.get(File, file_id)
    if row is None or row.project_id != project_id or expired(row):
        raise not_found("File", file_id, param)
    return row


def expired(row: File) -> bool:
    """An expired file is not served (listed, read or used), as if deleted; its bytes go when it is deleted."""
    return row.expires_at is not None and row.expires_at <= now()


def list_files(
    store: Store, project_id: str, purpose: str | None, after: str | None, limit: int, order: str
) -> tuple[list[File], bool]:
    with store.session() as s:
        query = select(File).where(File.project_id == project_id)
        if purpose:
            query = query.where(File.purpose == purpose)
        desc = order != "asc"
        query = query.order_by(File.created_at.desc() if desc else File.created_at, File.id.desc() if desc else File.id)
        rows = [f for f in s.scalars(query) if not expired(f)]
    if after:
        ids = [f.id for f in rows]
        rows = rows[ids.index(after) + 1 :] if after in ids else rows
    return rows[:limit], len(rows) > limit


def delete_file(store: Store, project_id: str, file_id: str, *, storage: Storage) -> None:
    """Forget the file and remove its bytes from the storage."""
    row = get_file(store, project_id, file_id)
    with store.session() as s:
        s.delete(s.get(File, file_id))
    if row.path.startswith("/"):  # a host path from before storage keys
        if os.path.exists(row.path):
            os.unlink(row.path)
    else:
        storage.delete(row.path)


def file_object(f: File) -> dict[str, Any]:
    """OpenAI's File; `expires_at` and `status_details` are left out when unset (the spec has no null for them)."""
    out = {
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_at,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": f.status,
    }
    if f.status_details is not None:
        out["status_details"] = f.status_details
    if f.expires_at is not None:
        out["expires_at"] = f.expires_at
    return out
