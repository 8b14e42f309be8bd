"""The service under abuse: body caps (413 with the limit), prompts over the context (400 with both
lengths), max_tokens capped by the context left, work stopped for a client that hung up, a long prompt
batched on its own; /health without other projects' model ids and 503 without a worker; job options
that run code or read server files refused; no server path, internal id or traceback reaches a client."""

from __future__ import annotations

import json
import logging
import threading
import time

import httpx2 as httpx
import openai
import pytest

from helpers import serve_in_thread, tiny_service, write_chat_jsonl
from tuneforge.serve import files, job_states, jobs, keys, runner
from tuneforge.serve.app import create_app
from tuneforge.serve.engine import Sampling, _cost, _Item, _within_tokens
from tuneforge.serve.settings import ServeSettings
from tuneforge.serve.tables import JobEvent

CONTEXT = 512  # the tiny demo model's max_position_embeddings


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with tiny_service(home, max_request_bytes=64_000, health_min_workers=0) as (url, store, app, settings):
        _, key = keys.create_key(store, "alpha")
        project = keys.authenticate(store, key).project_id
        yield {
            "url": url,
            "key": key,
            "home": home,
            "store": store,
            "app": app,
            "settings": settings,
            "project": project,
        }


def post(server, path: str, body, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {server['key']}"}
    return httpx.post(server["url"] + path, json=body, headers=headers, timeout=60, **kw)


def ask(content: str, **extra) -> dict:
    return {"model": "demo", "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}


def test_a_body_over_the_limit_is_a_413_naming_it(server):
    big = ask("x" * 70_000)
    r = post(server, "/v1/chat/completions", big)
    assert r.status_code == 413 and "64000 bytes" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: refused once the chunks pass the limit
        data = json.dumps(big).encode()
        for i in range(0, len(data), 8192):
            yield data[i : i + 8192]

    r = httpx.post(
        server["url"] + "/v1/chat/completions",
        content=chunks(),
        timeout=60,
        headers={"Authorization": f"Bearer {server['key']}", "Content-Type": "application/json"},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_a_prompt_over_the_context_is_a_400_with_both_lengths(server):
    r = post(server, "/v1/chat/completions", ask("where is my parcel " * 2000))
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "context_length_exceeded" and err["param"] == "messages"
    assert f"{CONTEXT} tokens" in err["message"]
    told = int(err["message"].split("your messages has at least ")[1].split()[0])  # refused on its characters
    assert told >= CONTEXT
    r = post(server, "/v1/chat/completions", ask("where is my parcel " * 120))  # near the limit: measured exactly
    assert r.status_code == 400, r.text
    assert int(r.json()["error"]["message"].split("your messages has ")[1].split()[0]) >= CONTEXT
    r = post(server, "/v1/completions", {"model": "demo", "prompt": "parcel " * 2000, "max_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def test_max_tokens_is_capped_by_the_context_left(server, monkeypatch):
    import tuneforge.serve.streaming as streaming

    monkeypatch.setattr(streaming, "stop_token_ids", lambda model, tokenizer: [])  # only the length ends it
    r = post(server, "/v1/chat/completions", ask("Where is my parcel?", max_tokens=100_000, temperature=0))
    assert r.status_code == 200, r.text
    usage, choice = r.json()["usage"], r.json()["choices"][0]
    assert choice["finish_reason"] == "length" and usage["prompt_tokens"] + usage["completion_tokens"] == CONTEXT


def test_a_non_streamed_generation_stops_when_its_client_hangs_up(server, monkeypatch):
    import tuneforge.serve.streaming as streaming

    monkeypatch.setattr(streaming, "stop_token_ids", lambda model, tokenizer: [])
    real = streaming.generate_ids

    def slow_generate_ids(*args, on_text=None, **kwargs):
        """~10 ms a token, so the answer outlasts the client's 1 s however fast the machine decodes."""

        def paced(*piece):
            time.sleep(0.01)
            if on_text is not None:
                on_text(*piece)

        return real(*args, on_text=paced, **kwargs)

    monkeypatch.setattr(streaming, "generate_ids", slow_generate_ids)
    engine = server["app"].state.services.engine
    before = engine.cancelled
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after 1 s and closes the connection
        httpx.post(
            server["url"] + "/v1/chat/completions",
            json=ask("Tell me everything", max_tokens=100_000),
            headers={"Authorization": f"Bearer {server['key']}"},
            timeout=1.0,
        )
    deadline = time.monotonic() + 30
    while engine.cancelled == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.cancelled == before + 1


def _item(tokens: int, rows: int = 1, max_tokens: int = 8) -> _Item:
    from concurrent.futures import Future

    sampling = Sampling(max_tokens, 0.0, 1.0, (), None)
    item = _Item("chat", None, [[{"role": "user", "content": "x"}]] * rows, sampling, Future())
    item.tokens = tokens
    return item


def test_a_long_prompt_gets_a_batch_of_its_own_and_runs_after_the_short_ones():
    shorts, long = [_item(20) for _ in range(6)], _item(3000)
    parts = _within_tokens([shorts[0], long, *shorts[1:]], budget=4096)
    assert parts == [shorts, [long]]  # six short rows share a pass; the long one does not pad them to 3000
    assert sorted([[long], shorts], key=_cost) == [shorts, [long]]


def test_health_lists_no_model_ids_and_is_503_without_a_worker(server, tmp_path):
    post(server, "/v1/chat/completions", ask("hi"))
    body = httpx.get(server["url"] + "/health").json()
    assert body["status"] == "ok" and isinstance(body["models_loaded"], int) and "demo" not in json.dumps(body)
    settings = ServeSettings(
        database_url=f"sqlite:///{tmp_path / 'h.db'}", data_dir=tmp_path / "serve", health_min_workers=1
    )
    with serve_in_thread(create_app(settings)) as url:
        r = httpx.get(url + "/health")
    assert r.status_code == 503 and r.json()["status"] == "unhealthy" and r.json()["workers_alive"] == 0


@pytest.fixture(scope="module")
def training_file(server, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    write_chat_jsonl(path, 20)
    c = openai.OpenAI(base_url=server["url"] + "/v1", api_key=server["key"], max_retries=0)
    return c.files.create(file=path.open("rb"), purpose="fine-tune").id


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"eval": {"custom_metric": "evil.py:run"}}, "tuneforge.eval.custom_metric"),
        ({"model": {"trust_remote_code": True}}, "tuneforge.model.trust_remote_code"),
        ({"eval": {"rag_docs": "/etc"}}, "tuneforge.eval.rag_docs"),
        ({"model": {"chat_template": "/etc/passwd"}}, "tuneforge.model.chat_template"),
    ],
)
def test_job_options_that_run_code_or_read_files_are_refused(server, training_file, options, param):
    r = post(server, "/v1/fine_tuning/jobs", {"model": "demo", "training_file": training_file, "tuneforge": options})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_the_operator_may_allow_them(server, training_file, monkeypatch):
    monkeypatch.setattr(server["settings"], "allow_unsafe_job_options", True)
    r = post(
        server,
        "/v1/fine_tuning/jobs",
        {"model": "demo", "training_file": training_file, "tuneforge": {"model": {"trust_remote_code": True}}},
    )
    assert r.status_code == 200, r.text
    post(server, f"/v1/fine_tuning/jobs/{r.json()['id']}/cancel", {})


def _no_server_detail(server, text: str) -> None:
    assert str(server["home"]) not in text and server["project"] not in text


def test_upload_and_feedback_export_errors_name_no_server_path(server):
    headers = {"Authorization": f"Bearer {server['key']}"}
    for name, content in (("bad.jsonl", b"{not json\n"), ("bad.parquet", b"garbage"), ("empty.jsonl", b"")):
        r = httpx.post(
            server["url"] + "/v1/files", files={"file": (name, content)}, data={"purpose": "fine-tune"}, headers=headers
        )
        assert r.status_code == 400 and name in r.text
        _no_server_detail(server, r.text)
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "correction": "hello"}
    fb = post(server, "/v1/feedback", body)
    assert fb.status_code == 200
    assert post(server, f"/v1/feedback/{fb.json()['id']}", {"status": "accepted"}).status_code == 200
    r = post(server, "/v1/feedback/export", {"model": "demo"})
    _no_server_detail(server, r.text)


def test_failed_job_errors_and_events_carry_no_paths_ids_or_tracebacks(server, training_file, monkeypatch, caplog):
    store, settings = server["store"], server["settings"]
    job = jobs.create_job(
        store,
        project_id=server["project"],
        model="demo",
        training_file=training_file,
        validation_file=None,
        hyperparameters={},
        method={"type": "supervised"},
        options={},
        suffix=None,
        seed=1,
        user_metadata=None,
    )
    job_states.files_validated(store, job.id)
    with store.session() as s:
        assert job_states.claim(s, job.id, "worker-test", time.time())
    with store.session() as s:  # the stored copy of the training file, as a reader would quote it
        from tuneforge.serve.tables import File

        train_path = str(files.local_copy(settings, s.get(File, training_file)))  # the row holds its storage key
    quoted = f"{train_path}:3: bad record; see {settings.data_dir}/runs/{job.id}/x"
    text = runner.client_text(quoted, store, settings, job)
    assert training_file in text
    _no_server_detail(server, text)

    def broken(*args, **kwargs):
        raise RuntimeError(f"exploded reading {train_path}")

    monkeypatch.setattr(runner, "_train", broken)
    monkeypatch.setattr(runner, "_watch_worker", lambda *a: None)  # no worker to watch in a test
    monkeypatch.setattr(runner, "_die_with_parent", lambda: None)
    with caplog.at_level(logging.ERROR, logger="tuneforge.serve.runner"), pytest.raises(RuntimeError):
        runner.run_job(store.url, settings, job.id, threading.Event(), 0)
    with store.session() as s:
        error = s.get(type(job), job.id).error
        events = [e.message for e in s.query(JobEvent).filter(JobEvent.job_id == job.id)]
    error_id = error["message"].split("error id ")[1].split(")")[0]
    assert error_id in caplog.text and "exploded" in caplog.text  # the details are in the server log
    shown = json.dumps([error, events])
    assert "Traceback" not in shown and "exploded" not in shown and error_id in shown
    _no_server_detail(server, shown)
