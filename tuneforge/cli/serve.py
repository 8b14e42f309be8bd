"""`tuneforge serve`, `tuneforge worker` and `tuneforge keys ...` (the service's admin)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Optional

import typer

keys_app = typer.Typer(help="Create, list and revoke API keys (each belongs to one project).", no_args_is_help=True)

DB_HELP = "Database URL (default: $TUNEFORGE_DATABASE_URL, else SQLite under $TUNEFORGE_HOME/serve)."


def serve(host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0 exposes the API to the network)."),
          port: int = typer.Option(8000, help="TCP port."),
          workers: int = typer.Option(1, min=0, help="Training worker processes to start beside the API (0: run `tuneforge worker` yourself)."),
          database_url: Optional[str] = typer.Option(None, help=DB_HELP)) -> None:
    """Run the OpenAI-compatible API (files, fine-tuning jobs, models, chat, embeddings)."""
    import uvicorn

    from tuneforge.serve.app import create_app
    from tuneforge.serve.db import Store
    from tuneforge.serve.settings import ServeSettings

    settings = ServeSettings()
    _build_demo_if_offered(settings)
    store = Store(database_url or settings.database_url)  # migrates before any worker starts
    env = {**os.environ, "TUNEFORGE_DATABASE_URL": store.url}
    procs = [subprocess.Popen([sys.executable, "-m", "tuneforge.serve.worker"], env=env) for _ in range(workers)]
    try:
        uvicorn.run(create_app(settings, store), host=host, port=port, log_level="info")
    finally:
        for p in procs:
            p.terminate()  # the worker re-queues a running job, then exits
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def worker(database_url: Optional[str] = typer.Option(None, help=DB_HELP)) -> None:
    """Run one training worker; start several (on any machine) against one database."""
    from tuneforge.serve.settings import ServeSettings
    from tuneforge.serve.worker import main as run_worker

    _build_demo_if_offered(ServeSettings())
    run_worker(database_url)


def _build_demo_if_offered(settings) -> None:
    """Build the demo base model (once; cached) when the service offers it, before the API or a worker starts:
    resolving 'demo' later never builds it."""
    from tuneforge.serve.catalog import base_models
    from tuneforge.train.pretrain import ensure_demo_model

    if "demo" in base_models(settings):
        ensure_demo_model(progress=False)


def _store(database_url: Optional[str]):
    from tuneforge.serve.db import Store

    return Store(database_url)


@keys_app.command("create")
def keys_create(project: str = typer.Option(..., help="Project the key belongs to (created if new)."),
                name: Optional[str] = typer.Option(None, help="A label for the key."),
                database_url: Optional[str] = typer.Option(None, help=DB_HELP)) -> None:
    """Create a key; the key itself is the only line printed on stdout."""
    from tuneforge.serve.keys import create_key

    _, key = create_key(_store(database_url), project, name)
    print(key)


@keys_app.command("revoke")
def keys_revoke(key: str = typer.Argument(..., help="The key, or its id (key_...)."),
                database_url: Optional[str] = typer.Option(None, help=DB_HELP)) -> None:
    """Revoke a key at once."""
    from tuneforge.errors import ConfigError, Problem
    from tuneforge.serve.keys import revoke_key

    if not revoke_key(_store(database_url), key):
        raise ConfigError("no such active key", [Problem("KEY", f"{key[:12]}... is unknown or already revoked", "see `tuneforge keys list`")])
    typer.echo("revoked", err=True)


@keys_app.command("list")
def keys_list(project: Optional[str] = typer.Option(None, help="Only this project's keys."),
              database_url: Optional[str] = typer.Option(None, help=DB_HELP)) -> None:
    """List keys (ids and prefixes; keys themselves are never stored)."""
    from tuneforge.serve.keys import list_keys

    for row in list_keys(_store(database_url), project):
        print(json.dumps(row))


def register(app: typer.Typer) -> None:
    """Add the service's commands to the main `tuneforge` app."""
    app.command("serve")(serve)
    app.command("worker")(worker)
    app.add_typer(keys_app, name="keys")
