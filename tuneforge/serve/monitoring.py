"""Per-model request counts, latency and tokens (Prometheus), request logs with PII
redaction, and per-model usage summaries read back from the logs."""

from __future__ import annotations

import re
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from tuneforge.serve.db import Store
from tuneforge.serve.settings import ServeSettings
from tuneforge.serve.tables import Job, RequestLog

# Order matters: e-mails before the looser number patterns.
_PII = [
    (re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+"), "[EMAIL]"),
    (re.compile(r"\b(?:\d[ -]?){13,19}\b"), "[CARD]"),
    (re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}\b"), "[IBAN]"),
    (re.compile(r"(?<!\w)\+?\d[\d ()-]{7,}\d\b"), "[PHONE]"),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b"), "[IP]"),
]


def redact(text: str) -> str:
    for pattern, token in _PII:
        text = pattern.sub(token, text)
    return text


def _redact_obj(obj: Any) -> Any:
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: _redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_redact_obj(v) for v in obj]
    return obj


class _JobGauge:
    """Jobs per status, read from the database at scrape time (workers are other processes)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self):
        gauge = GaugeMetricFamily("tuneforge_jobs", "Fine-tuning jobs by status", labels=["status"])
        with self.store.session() as s:
            for status, n in s.execute(select(Job.status, func.count()).group_by(Job.status)):
                gauge.add_metric([status], n)
        yield gauge


class Monitor:
    def __init__(self, store: Store, settings: ServeSettings) -> None:
        self.store, self.settings = store, settings
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tuneforge_requests", "Inference requests", ["model", "endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "tuneforge_request_latency_seconds",
            "Inference latency",
            ["model", "endpoint"],
            registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.tokens = Counter("tuneforge_tokens", "Tokens processed", ["model", "kind"], registry=self.registry)
        self.registry.register(_JobGauge(store))

    def record(
        self,
        *,
        project_id: str,
        model: str,
        endpoint: str,
        started: float,
        prompt_text: str,
        prompt_tokens: int,
        completion_tokens: int,
        request: dict[str, Any] | None = None,
        response: dict[str, Any] | None = None,
    ) -> None:
        latency = time.perf_counter() - started
        self.requests.labels(model, endpoint, "ok").inc()
        self.latency.labels(model, endpoint).observe(latency)
        self.tokens.labels(model, "prompt").inc(prompt_tokens)
        self.tokens.labels(model, "completion").inc(completion_tokens)
        scrub = _redact_obj if self.settings.redact_pii else (lambda x: x)
        log = self.settings.log_requests
        with self.store.session() as s:
            s.add(
                RequestLog(
                    project_id=project_id,
                    model=model,
                    endpoint=endpoint,
                    created_at=time.time(),
                    latency_ms=latency * 1000,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    prompt_text=scrub(prompt_text)[:20000],
                    request=scrub(request) if log else None,
                    response=scrub(response) if log else None,
                )
            )

    def failed(self, model: str, endpoint: str) -> None:
        self.requests.labels(model, endpoint, "error").inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def usage(self, project_id: str) -> list[dict[str, Any]]:
        """Per-model totals of this project's requests (from the request log)."""
        cols = (
            RequestLog.model,
            func.count(),
            func.avg(RequestLog.latency_ms),
            func.max(RequestLog.latency_ms),
            func.sum(RequestLog.prompt_tokens),
            func.sum(RequestLog.completion_tokens),
        )
        with self.store.session() as s:
            rows = s.execute(
                select(*cols)
                .where(RequestLog.project_id == project_id)
                .group_by(RequestLog.model)
                .order_by(RequestLog.model)
            )
            return [
                {
                    "model": m,
                    "requests": n,
                    "mean_latency_ms": round(avg, 2),
                    "max_latency_ms": round(mx, 2),
                    "prompt_tokens": int(pt),
                    "completion_tokens": int(ct),
                }
                for m, n, avg, mx, pt, ct in rows
            ]
