"""Server settings: read from the environment once, overridable in code and tests."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.config import tuneforge_home


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _env_int_or_none(name: str) -> int | None:
    return int(os.environ[name]) if os.environ.get(name) else None


@dataclass
class ServeSettings:
    database_url: str | None = field(default_factory=lambda: os.environ.get("TUNEFORGE_DATABASE_URL"))
    data_dir: Path = field(default_factory=lambda: tuneforge_home() / "serve")
    max_upload_bytes: int = field(default_factory=lambda: int(_env_float("TUNEFORGE_MAX_UPLOAD_MB", 512) * 1024 * 1024))
    # Base models a key may use besides 'demo' and the folders under $TUNEFORGE_HOME/models.
    base_models: list[str] = field(
        default_factory=lambda: [m for m in os.environ.get("TUNEFORGE_BASE_MODELS", "").split(",") if m]
    )
    model_cache_bytes: int = field(
        default_factory=lambda: int(_env_float("TUNEFORGE_MODEL_CACHE_MB", 4096) * 1024 * 1024)
    )
    log_requests: bool = field(default_factory=lambda: os.environ.get("TUNEFORGE_LOG_REQUESTS", "0") == "1")
    redact_pii: bool = field(default_factory=lambda: os.environ.get("TUNEFORGE_REDACT_PII", "1") == "1")
    drift_threshold: float = field(default_factory=lambda: _env_float("TUNEFORGE_DRIFT_THRESHOLD", 0.25))
    batch_window_ms: float = field(default_factory=lambda: _env_float("TUNEFORGE_BATCH_WINDOW_MS", 10))
    max_batch_size: int = field(default_factory=lambda: int(_env_float("TUNEFORGE_MAX_BATCH", 8)))
    # /metrics lists every project's models and traffic: with a token set, scrapers must send it
    # as "Authorization: Bearer TOKEN"; unset, /metrics is open (bind the service to a private address).
    metrics_token: str | None = field(default_factory=lambda: os.environ.get("TUNEFORGE_METRICS_TOKEN") or None)
    # torch threads for generation; None keeps torch's default (all cores). On a shared or
    # busy machine 1 is often several times faster for small models (no thread oversubscription).
    inference_threads: int | None = field(
        default_factory=lambda: (
            int(os.environ["TUNEFORGE_INFERENCE_THREADS"]) if os.environ.get("TUNEFORGE_INFERENCE_THREADS") else None
        )
    )
    # A running job whose worker sent no heartbeat for this long is taken back by another worker.
    job_lease_s: float = field(default_factory=lambda: _env_float("TUNEFORGE_JOB_LEASE_S", 30))
    # Runs a job gets (the first plus retries after a crashed process or a lost worker) before it fails.
    job_max_attempts: int = field(default_factory=lambda: int(_env_float("TUNEFORGE_JOB_MAX_ATTEMPTS", 2)))
    # torch threads of each training process; None keeps torch's default (all cores).
    worker_threads: int | None = field(default_factory=lambda: _env_int_or_none("TUNEFORGE_WORKER_THREADS"))

    # Bodies of every route but /v1/files uploads (which have max_upload_bytes): a larger one is a 413.
    max_request_bytes: int = field(default_factory=lambda: int(_env_float("TUNEFORGE_MAX_REQUEST_MB", 4) * 1024 * 1024))
    # Prompt tokens plus padding one generate_batch call may hold: a long prompt runs in its own batch
    # instead of making every short row of its batch pay its length.
    max_batch_tokens: int = field(default_factory=lambda: int(_env_float("TUNEFORGE_MAX_BATCH_TOKENS", 8192)))
    # Job options that run code or read server files (eval.custom_metric, model.trust_remote_code, paths
    # such as eval.rag_docs or a .jinja chat_template) are refused from the API unless this is set.
    allow_unsafe_job_options: bool = field(
        default_factory=lambda: os.environ.get("TUNEFORGE_ALLOW_UNSAFE_JOB_OPTIONS", "0") == "1"
    )
    # SIGTERM: how long serve waits for running requests and for workers to checkpoint their jobs.
    drain_timeout_s: float = field(default_factory=lambda: _env_float("TUNEFORGE_DRAIN_TIMEOUT_S", 20))

    # /health answers 503 while fewer training workers than this are alive (serve with --workers N sets 1).
    health_min_workers: int = field(default_factory=lambda: int(_env_float("TUNEFORGE_HEALTH_MIN_WORKERS", 0)))

    # Where uploads and run artifacts live (keys in the database): file:///folder (a folder every machine
    # mounts: NFS) or s3://bucket/prefix; unset, the data_dir folder of this home (one machine).
    storage_url: str | None = field(default_factory=lambda: os.environ.get("TUNEFORGE_STORAGE_URL") or None)
    # s3:// only: keyword arguments of s3fs.S3FileSystem, as JSON ('{"endpoint_url": "http://minio:9000"}').
    storage_options: dict[str, Any] = field(
        default_factory=lambda: json.loads(os.environ.get("TUNEFORGE_STORAGE_OPTIONS") or "{}")
    )

    def storage(self):
        """The shared storage (`tuneforge.serve.storage`), one instance per process."""
        from tuneforge.serve.storage import open_storage

        url = self.storage_url or Path(self.data_dir).expanduser().resolve().as_uri()
        return open_storage(url, self.storage_options)

    @property
    def cache_dir(self) -> Path:
        """Local copies of stored objects (models, training files) when the storage is not a local folder."""
        return self.data_dir / "cache"

    @property
    def work_dir(self) -> Path:
        """Run directories being written, synced to the storage, when the storage is not a local folder."""
        return self.data_dir / "work"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"
