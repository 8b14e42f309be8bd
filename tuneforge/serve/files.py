"""Uploaded files: stored on disk under the data dir, described by rows of `files`.

Fine-tune uploads are validated with `tuneforge.data.validate.validate_file`; a file with
errors is refused and every problem is reported with its line, as OpenAI does.
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


def create_file(
    store: Store, files_dir: Path, project_id: str, filename: str, purpose: str, src: BinaryIO, limit: int
) -> File:
    if purpose != "fine-tune":
        raise APIError(
            400,
            f"'{purpose}' is not a supported purpose for uploads; use 'fine-tune'.",
            param="purpose",
            code="invalid_purpose",
        )
    file_id = new_id("file-")
    suffix = Path(filename).suffix.lower()[:10] or ".jsonl"  # the validator detects formats by extension too
    path = files_dir / project_id / f"{file_id}{suffix}"
    size = save_upload(src, path, limit)
    report = validate_file(path)
    if not report.ok:
        path.unlink()
        raise validation_error(report, filename)
    row = File(
        id=file_id,
        project_id=project_id,
        filename=filename,
        purpose=purpose,
        bytes=size,
        path=str(path),
        status="processed",
        status_details=None,
        validation=_summary(report, filename),
        created_at=now(),
    )
    with store.session() as s:
        s.add(row)
    return row


def _summary(report: Any, filename: str) -> dict[str, Any]:
    d = report.to_dict()
    d["file"] = filename
    d["warnings"] = [{**w, "file": filename} for w in d["warnings"][:50]]
    d.pop("errors")
    return d


def store_result_file(store: Store, files_dir: Path, project_id: str, filename: str, content: bytes) -> File:
    """A file the service writes itself (a job's step metrics CSV)."""
    file_id = new_id("file-")
    path = files_dir / project_id / f"{file_id}{Path(filename).suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    row = File(
        id=file_id,
        project_id=project_id,
        filename=filename,
        purpose="fine-tune-results",
        bytes=len(content),
        path=str(path),
        status="processed",
        status_details=None,
        validation=None,
        created_at=now(),
    )
    with store.session() as s:
        s.add(row)
    return row


def get_file(store: Store, project_id: str, file_id: str, param: str | None = None) -> File:
    with store.session() as s:
        row = s.get(File, file_id)
    if row is None or row.project_id != project_id:
        raise not_found("File", file_id, param)
    return row


def list_files(
    store: Store, project_id: str, purpose: str | None, after: str | None, limit: int, order: str
) -> tuple[list[File], bool]:
    with store.session() as s:
        query = select(File).where(File.project_id == project_id)
        if purpose:
            query = query.where(File.purpose == purpose)
        desc = order != "asc"
        query = query.order_by(File.created_at.desc() if desc else File.created_at, File.id.desc() if desc else File.id)
        rows = list(s.scalars(query))
    if after:
        ids = [f.id for f in rows]
        rows = rows[ids.index(after) + 1 :] if after in ids else rows
    return rows[:limit], len(rows) > limit


def delete_file(store: Store, project_id: str, file_id: str) -> None:
    row = get_file(store, project_id, file_id)
    with store.session() as s:
        s.delete(s.get(File, file_id))
    if os.path.exists(row.path):
        os.unlink(row.path)


def file_object(f: File) -> dict[str, Any]:
    return {
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_at,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": f.status,
        "status_details": f.status_details,
        "expires_at": None,
    }
