"""The service's tables (SQLAlchemy 2 ORM). The migrations in `migrations/versions` create them.

Times are Unix seconds: integers where OpenAI shows them (`created_at`), floats for
heartbeats, which need sub-second resolution to detect a dead worker quickly.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[int] = mapped_column(Integer)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    # sha256 of the key: keys are 256-bit random, so a fast hash is enough (no brute force).
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # shown in listings to tell keys apart
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[int] = mapped_column(Integer)
    revoked_at: Mapped[int | None] = mapped_column(Integer)


class File(Base):
    __tablename__ = "files"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    filename: Mapped[str] = mapped_column(String(500))
    purpose: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(32))  # uploaded | processed | error
    status_details: Mapped[str | None] = mapped_column(Text)
    validation: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # ValidationReport.to_dict()
    created_at: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[int | None] = mapped_column(Integer)  # expires_after; an expired file is not served


class Upload(Base):
    """A multipart upload (/v1/uploads): parts are added, then completed into one File."""

    __tablename__ = "uploads"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    filename: Mapped[str] = mapped_column(String(500))
    purpose: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)  # announced at creation; complete checks it
    mime_type: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))  # pending | completed | cancelled | expired
    file_id: Mapped[str | None] = mapped_column(String(64))
    file_expires_after: Mapped[int | None] = mapped_column(Integer)  # seconds after completion
    created_at: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[int] = mapped_column(Integer)


class UploadPart(Base):
    __tablename__ = "upload_parts"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    upload_id: Mapped[str] = mapped_column(ForeignKey("uploads.id", ondelete="CASCADE"), index=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(Integer)


class Batch(Base):
    """A /v1/batches job: the requests of an input file, answered into an output and an error file."""

    __tablename__ = "batches"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    output_file_id: Mapped[str | None] = mapped_column(String(64))
    error_file_id: Mapped[str | None] = mapped_column(String(64))
    errors: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    request_counts: Mapped[dict[str, Any]] = mapped_column(JSON)
    user_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(Integer)
    in_progress_at: Mapped[int | None] = mapped_column(Integer)
    expires_at: Mapped[int] = mapped_column(Integer)
    finalizing_at: Mapped[int | None] = mapped_column(Integer)
    completed_at: Mapped[int | None] = mapped_column(Integer)
    failed_at: Mapped[int | None] = mapped_column(Integer)
    expired_at: Mapped[int | None] = mapped_column(Integer)
    cancelling_at: Mapped[int | None] = mapped_column(Integer)
    cancelled_at: Mapped[int | None] = mapped_column(Integer)
    runner_id: Mapped[str | None] = mapped_column(String(64))  # the API process answering it (its lease)
    heartbeat_at: Mapped[float | None] = mapped_column(Float)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    model: Mapped[str] = mapped_column(String(500))
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64))
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)  # resolved, as OpenAI shows them
    method: Mapped[dict[str, Any]] = mapped_column(JSON)  # OpenAI method object
    options: Mapped[dict[str, Any]] = mapped_column(JSON)  # tuneforge's own options
    suffix: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(Integer)
    user_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(32), index=True)
    control: Mapped[str | None] = mapped_column(String(16))  # cancel | pause requested
    resume: Mapped[bool] = mapped_column(default=False)  # next run continues from checkpoints
    fine_tuned_model: Mapped[str | None] = mapped_column(String(500))
    trained_tokens: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result_files: Mapped[list[Any]] = mapped_column(JSON)
    run_dir: Mapped[str | None] = mapped_column(Text)
    worker_id: Mapped[str | None] = mapped_column(String(64))
    heartbeat_at: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[int] = mapped_column(Integer, index=True)
    finished_at: Mapped[int | None] = mapped_column(Integer)


class JobEvent(Base):
    __tablename__ = "job_events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[int] = mapped_column(Integer)
    level: Mapped[str] = mapped_column(String(8))  # info | warn | error
    type: Mapped[str] = mapped_column(String(16))  # message | metrics
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    path: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(Integer)


class FineTunedModel(Base):
    __tablename__ = "fine_tuned_models"
    id: Mapped[str] = mapped_column(String(500), primary_key=True)  # ft:BASE:SUFFIX:ID
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    job_id: Mapped[str] = mapped_column(String(64))
    base_model: Mapped[str] = mapped_column(String(500))
    kind: Mapped[str] = mapped_column(String(16))  # adapter (LoRA, shares the base) | model (HF folder) | run (run dir)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(Integer)


class Worker(Base):
    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float)
    current_job_id: Mapped[str | None] = mapped_column(String(64))


class Feedback(Base):
    __tablename__ = "feedback"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    model: Mapped[str] = mapped_column(String(500), index=True)
    messages: Mapped[list[Any]] = mapped_column(JSON)  # the prompt conversation
    completion: Mapped[str | None] = mapped_column(Text)  # what the model answered
    correction: Mapped[str] = mapped_column(Text)  # what it should have answered, as sent (never rewritten)
    rating: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(Integer)
    # The review (migration 0004): pending | accepted | rejected; the reviewer's version of the answer.
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    reviewed_at: Mapped[int | None] = mapped_column(Integer)
    edited_correction: Mapped[str | None] = mapped_column(Text)


class RequestLog(Base):
    """One inference request: what monitoring and drift detection read."""

    __tablename__ = "request_logs"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(500))
    endpoint: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[float] = mapped_column(Float)
    latency_ms: Mapped[float] = mapped_column(Float)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    prompt_text: Mapped[str] = mapped_column(Text)  # redacted; drift compares it with training data
    request: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))  # only with request logging on
    response: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))


Index("ix_request_logs_model_seq", RequestLog.model, RequestLog.seq)
Index("ix_feedback_project_id_status", Feedback.project_id, Feedback.status)
