"""Helpers to run the service in tests: a throw-away PostgreSQL schema, a free port, and
the API server on 127.0.0.1 in a background thread."""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import uvicorn

PG_ADMIN_URL = os.environ.get("TUNEFORGE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def postgres_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def postgres_schema(admin_url: str = PG_ADMIN_URL) -> Iterator[str]:
    """A fresh schema for one test run; yields a URL whose search_path is that schema."""
    from sqlalchemy import create_engine, text

    schema = f"tf_test_{secrets.token_hex(4)}"
    engine = create_engine(admin_url)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in admin_url else "?"
    try:
        yield f"{admin_url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_in_thread(app, port: int | None = None) -> Iterator[str]:
    """Run `app` with uvicorn on 127.0.0.1; yields the base URL (`http://127.0.0.1:PORT`)."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
