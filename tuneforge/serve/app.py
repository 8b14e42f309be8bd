"""The FastAPI application: one OpenAI-compatible API for files, jobs, models and inference.

The API process never trains; jobs run in worker processes (see worker.py) that share
its database.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import select

from tuneforge import __version__
from tuneforge.serve import console
from tuneforge.serve.api import batches, console_support, errors, files, inference, jobs, models, ops, quality, uploads
from tuneforge.serve.api.deps import Services
from tuneforge.serve.api.limits import BodyLimit, body_limit
from tuneforge.serve.batches import BatchRunner
from tuneforge.serve.db import Store
from tuneforge.serve.engine import Engine
from tuneforge.serve.job_states import JobStatus
from tuneforge.serve.monitoring import Monitor
from tuneforge.serve.settings import ServeSettings
from tuneforge.serve.tables import Job


def create_app(settings: ServeSettings | None = None, store: Store | None = None) -> FastAPI:
    settings = settings or ServeSettings()
    store = store or Store(settings.database_url)
    engine = Engine(settings)
    services = Services(store=store, settings=settings, engine=engine, monitor=Monitor(store, settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        _revalidate_pending(services)
        engine.start()
        app.state.batch_runner = BatchRunner(services)
        app.state.batch_runner.start()  # batches run beside online requests on this process's engine
        yield
        await app.state.batch_runner.stop()
        engine.stop()

    app = FastAPI(title="tuneforge", version=__version__, lifespan=lifespan)
    app.state.services = services
    errors.install(app)
    app.add_middleware(BodyLimit, limit_for=body_limit(settings))  # outermost: before anything reads the body
    for module in (files, uploads, jobs, models, inference, batches, quality, ops, console_support):
        app.include_router(module.router)
    console.install(app)  # the web console at /: static files that call the routers above
    return app


def _revalidate_pending(services: Services) -> None:
    """Jobs left in validating_files by a previous API process (stopped mid-check)."""
    with services.store.session() as s:
        pending = list(s.scalars(select(Job.id).where(Job.status == JobStatus.VALIDATING_FILES.value)))
    for job_id in pending:
        jobs.validate_job_files(services, job_id)
