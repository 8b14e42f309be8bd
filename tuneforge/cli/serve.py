"""`tuneforge serve`, `tuneforge worker` and `tuneforge keys ...` (the service's admin)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time

import typer

keys_app = typer.Typer(help="Create, list and revoke API keys (each belongs to one project).", no_args_is_help=True)

log = logging.getLogger(__name__)
DB_HELP = "Database URL (default: $TUNEFORGE_DATABASE_URL, else SQLite under $TUNEFORGE_HOME/serve)."


def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0 exposes the API to the network)."),
    port: int = typer.Option(8000, help="TCP port."),
    workers: int = typer.Option(
        1, min=0, help="Training worker processes to start beside the API (0: run `tuneforge worker` yourself)."
    ),
    database_url: str | None = typer.Option(None, help=DB_HELP),
) -> None:
    """Run the OpenAI-compatible API (files, fine-tuning jobs, models, chat, embeddings)."""
    import uvicorn

    from tuneforge.serve.app import create_app
    from tuneforge.serve.db import Store
    from tuneforge.serve.settings import ServeSettings

    settings = ServeSettings()
    if "TUNEFORGE_HEALTH_MIN_WORKERS" not in os.environ:
        settings.health_min_workers = min(workers, 1)  # /health is 503 while none of its workers is alive
    _build_demo_if_offered(settings)
    store = Store(database_url or settings.database_url)  # migrates before any worker starts
    env = {**os.environ, "TUNEFORGE_DATABASE_URL": store.url, "TUNEFORGE_SUPERVISED": "1"}
    pool = WorkerPool(workers, env)
    pool.start()
    # SIGTERM/SIGINT: uvicorn stops accepting and gives running requests drain_timeout_s while the workers
    # re-queue their running jobs from a checkpoint and exit; whatever is left then is killed.
    config = uvicorn.Config(
        create_app(settings, store),
        host=host,
        port=port,
        log_level="info",
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
    )
    try:
        _run_server(config, on_signal=pool.terminate)
    finally:
        pool.stop(settings.drain_timeout_s)


def _run_server(config, on_signal) -> None:
    """uvicorn's server, telling the workers at the first SIGTERM/SIGINT, so that their jobs' checkpoints
    and the requests' drain run at the same time (one drain timeout for both)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            on_signal()
            super().handle_exit(sig, frame)

    Server(config).run()


class WorkerPool:
    """The worker processes of `tuneforge serve`: a worker that dies is reaped (no zombie hides its death
    from its job's process) and started again; stop() terminates them all, bounded."""

    RESTART_BACKOFF_S = (1, 2, 5, 10, 30)  # a worker that keeps dying is restarted less and less often

    def __init__(self, n: int, env: dict[str, str], poll_s: float = 1.0) -> None:
        self.n, self.env, self.poll_s = n, env, poll_s
        self.procs: list[subprocess.Popen] = []
        self.restarts = 0
        self._stop = threading.Event()
        self._stopping: float | None = None  # when terminate() was first called
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._supervise, name="tuneforge-workers", daemon=True)

    def _spawn(self) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "tuneforge.serve.worker"], env=self.env)

    def start(self) -> None:
        with self._lock:
            self.procs = [self._spawn() for _ in range(self.n)]
        if self.n:
            self._thread.start()

    def _supervise(self) -> None:
        failures = 0
        while not self._stop.wait(self.poll_s):
            with self._lock:
                for i, proc in enumerate(self.procs):
                    if self._stop.is_set() or proc.poll() is None:  # poll() also reaps a dead one
                        continue
                    failures += 1
                    log.warning("worker pid %s exited with %s; starting another", proc.pid, proc.returncode)
                    self.procs[i] = self._spawn()
                    self.restarts += 1
            if failures:
                self._stop.wait(self.RESTART_BACKOFF_S[min(failures, len(self.RESTART_BACKOFF_S)) - 1])
                failures = max(0, failures - 1)

    def terminate(self) -> None:
        """Ask every worker to stop (SIGTERM: it re-queues a running job from its checkpoint, then exits)."""
        if self._stopping is None:
            self._stopping = time.monotonic()
        self._stop.set()
        with self._lock:
            procs = list(self.procs)
        for p in procs:
            if p.poll() is None:
                p.terminate()

    def stop(self, timeout_s: float) -> None:
        """terminate(), then wait until `timeout_s` after the first terminate() and kill what is left."""
        self.terminate()
        with self._lock:
            procs = list(self.procs)
        deadline = self._stopping + timeout_s
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def worker(
    database_url: str | None = typer.Option(None, help=DB_HELP),
    gpus: str | None = typer.Option(
        None,
        help="GPUs this worker's jobs use, as CUDA_VISIBLE_DEVICES takes them (0,1): two workers on one machine "
        "get different ones. Default: $CUDA_VISIBLE_DEVICES.",
    ),
    max_procs: int | None = typer.Option(
        None, min=1, help="Without GPUs: the most training processes one job may ask for (default: the cores)."
    ),
) -> None:
    """Run one training worker; start several (on any machine) against one database."""
    from tuneforge.serve.settings import ServeSettings
    from tuneforge.serve.worker import main as run_worker
    from tuneforge.serve.worker import parse_gpus

    _build_demo_if_offered(ServeSettings())
    run_worker(database_url, gpus=parse_gpus(gpus), max_procs=max_procs)


def _build_demo_if_offered(settings) -> None:
    """Build the demo base model (once; cached) when the service offers it, before the API or a worker starts:
    resolving 'demo' later never builds it."""
    from tuneforge.serve.catalog import base_models
    from tuneforge.train.pretrain import ensure_demo_model

    if "demo" in base_models(settings):
        ensure_demo_model(progress=False)


def _store(database_url: str | None):
    from tuneforge.serve.db import Store

    return Store(database_url)


@keys_app.command("create")
def keys_create(
    project: str = typer.Option(..., help="Project the key belongs to (created if new)."),
    name: str | None = typer.Option(None, help="A label for the key."),
    database_url: str | None = typer.Option(None, help=DB_HELP),
) -> None:
    """Create a key; the key itself is the only line printed on stdout."""
    from tuneforge.serve.keys import create_key

    _, key = create_key(_store(database_url), project, name)
    print(key)


@keys_app.command("revoke")
def keys_revoke(
    key: str = typer.Argument(..., help="The key, or its id (key_...)."),
    database_url: str | None = typer.Option(None, help=DB_HELP),
) -> None:
    """Revoke a key at once."""
    from tuneforge.errors import ConfigError, Problem
    from tuneforge.serve.keys import revoke_key

    if not revoke_key(_store(database_url), key):
        raise ConfigError(
            "no such active key",
            [Problem("KEY", f"{key[:12]}... is unknown or already revoked", "see `tuneforge keys list`")],
        )
    typer.echo("revoked", err=True)


@keys_app.command("list")
def keys_list(
    project: str | None = typer.Option(None, help="Only this project's keys."),
    database_url: str | None = typer.Option(None, help=DB_HELP),
) -> None:
    """List keys (ids and prefixes; keys themselves are never stored)."""
    from tuneforge.serve.keys import list_keys

    for row in list_keys(_store(database_url), project):
        print(json.dumps(row))


def register(app: typer.Typer) -> None:
    """Add the service's commands to the main `tuneforge` app."""
    app.command("serve")(serve)
    app.command("worker")(worker)
    app.add_typer(keys_app, name="keys")
