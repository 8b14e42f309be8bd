"""Plain helpers shared by several test modules (and the service benchmarks): a throw-away
PostgreSQL schema, a free port, the API server on 127.0.0.1 in a background thread, the tiny
demo model installed under a home folder, chat JSONL files, and a small run config.

Fixtures live in conftest.py; these are functions a test or a module-scoped fixture calls with
its own arguments. They are not part of the tuneforge package: nothing a user installs needs them.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

PG_ADMIN_URL = os.environ.get("TUNEFORGE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


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
    import uvicorn

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


@contextmanager
def moto_s3(bucket: str | None = None) -> Iterator[tuple[str, dict]]:
    """moto's S3 server on 127.0.0.1 with one new bucket; yields (s3://BUCKET, s3fs options) for S3Storage.
    moto keeps its buckets in process memory shared by every server it starts, so each call gets its own name."""
    bucket = bucket or f"tuneforge-test-{uuid.uuid4().hex[:8]}"
    import s3fs
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "testing", "secret": "testing"}
    try:
        s3fs.S3FileSystem(skip_instance_cache=True, **options).mkdir(bucket)
        yield f"s3://{bucket}", options
    finally:
        server.stop()


def install_tiny_demo(home) -> None:
    """A 2-layer hidden-64 Llama as $TUNEFORGE_HOME/models/demo, so 'demo' needs no pretraining."""
    from tuneforge.data.synthetic import support_desk_dataset
    from tuneforge.models.demo import build_tiny_llama, build_tokenizer, save_model_folder

    convs = support_desk_dataset(60, seed=0)
    texts = [m.content for c in convs for m in c.messages]
    tok = build_tokenizer(texts, vocab_size=512)
    folder = home / "models" / "demo"
    save_model_folder(build_tiny_llama(tok, hidden=64, layers=2), tok, folder)
    (folder / ".complete").write_text("ok\n")


@contextmanager
def tiny_service(home, **settings_kw) -> Iterator[tuple[str, object, object, object]]:
    """The HTTP service on the tiny demo model under `home`, in a thread: (url, store, app, settings).
    `settings_kw` overrides ServeSettings (limits, sizes); one inference thread keeps tests steady."""
    import pytest

    from tuneforge.serve.app import create_app
    from tuneforge.serve.db import Store
    from tuneforge.serve.settings import ServeSettings

    mp = pytest.MonkeyPatch()
    mp.setenv("TUNEFORGE_HOME", str(home))
    install_tiny_demo(home)
    settings = ServeSettings(
        database_url=f"sqlite:///{home / 'tf.db'}", data_dir=home / "serve", inference_threads=1, **settings_kw
    )
    store = Store(settings.database_url)
    app = create_app(settings, store)
    try:
        with serve_in_thread(app) as url:
            yield url, store, app, settings
    finally:
        mp.undo()
        store.dispose()


def write_chat_jsonl(path, n: int, seed: int = 0) -> None:
    from tuneforge.data.synthetic import support_desk_dataset

    path.write_text("".join(json.dumps(c.to_dict()) + "\n" for c in support_desk_dataset(n, seed)))


def make_config(tiny_model_dir, data, out, method=None, **train_kw):
    """An SFT run on the tiny model: LoRA r=4 unless `method`, 6 steps; `train_kw` override the train section."""
    from tuneforge.config import DataSection, LoraMethod, ModelSection, RunConfig, TrainSection

    defaults = dict(
        max_steps=6, batch_size=8, lr=5e-3, eval_every=3, save_every=3, log_every=1, warmup_ratio=0.0, seed=7
    )
    return RunConfig(
        objective="sft",
        output_dir=out,
        model=ModelSection(name=str(tiny_model_dir), max_length=128),
        data=DataSection(train=data["train"], validation=data["validation"], test=data["test"]),
        method=method or LoraMethod(r=4, alpha=8),
        train=TrainSection(**{**defaults, **train_kw}),
    )
