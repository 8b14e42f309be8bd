"""/health, /metrics (Prometheus text format) and per-project usage."""

from __future__ import annotations

import hmac
import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import select

from tuneforge.serve.api.deps import Services, principal, services
from tuneforge.serve.api.errors import APIError, declared
from tuneforge.serve.keys import Principal
from tuneforge.serve.tables import Worker

router = APIRouter()


@router.get("/health", responses=declared(503))
def health(svc: Services = Depends(services)) -> JSONResponse:
    try:
        with svc.store.session() as s:
            cutoff = time.time() - svc.settings.job_lease_s
            alive = len(list(s.scalars(select(Worker.id).where(Worker.heartbeat_at > cutoff))))
    except Exception as exc:  # the database is down: report it instead of a bare 500
        return JSONResponse({"status": "error", "database": f"unreachable: {type(exc).__name__}"}, status_code=503)
    # Unauthenticated: counts only, never a project's model ids.
    body = {
        "status": "ok",
        "database": svc.store.engine.dialect.name,
        "workers_alive": alive,
        "models_loaded": len(svc.engine.loaded()),
    }
    if alive < svc.settings.health_min_workers:
        return JSONResponse({**body, "status": "unhealthy", "reason": "no training worker is alive"}, status_code=503)
    return JSONResponse(body)


@router.get("/metrics")
def metrics(request: Request, svc: Services = Depends(services)) -> Response:
    token = svc.settings.metrics_token
    if token:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise APIError(
                401,
                "/metrics needs the metrics token: send Authorization: Bearer $TUNEFORGE_METRICS_TOKEN "
                "(Prometheus: `authorization: {credentials: ...}` in the scrape config).",
                code="invalid_metrics_token",
            )
    return Response(svc.monitor.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/monitoring/usage")
def usage(who: Principal = Depends(principal), svc: Services = Depends(services)) -> dict:
    return {"object": "list", "data": svc.monitor.usage(who.project_id)}
