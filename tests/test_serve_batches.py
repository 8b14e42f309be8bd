"""/v1/batches with the official `openai` client: a JSONL of chat (and embedding) requests answered in the
background through the engine into output and error files; input checks, listing, isolation, cancel."""

from __future__ import annotations

import json
import time

import openai
import pytest

from helpers import tiny_service
from tuneforge.serve import keys


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with tiny_service(home) as (url, store, app, _):
        _, key_a = keys.create_key(store, "alpha")
        _, key_b = keys.create_key(store, "beta")
        yield {"url": url, "a": key_a, "b": key_b, "store": store}


def client(server, key: str = "") -> openai.OpenAI:
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=key or server["a"], max_retries=0)


def jsonl(lines: list[dict]) -> bytes:
    return "".join(json.dumps(x) + "\n" for x in lines).encode()


def chat_line(custom_id: str, content: str, **body) -> dict:
    body = {"model": "demo", "messages": [{"role": "user", "content": content}], "max_tokens": 6, **body}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def wait(c: openai.OpenAI, batch_id: str, statuses: tuple[str, ...], timeout: float = 60):
    deadline = time.time() + timeout
    while (b := c.batches.retrieve(batch_id)).status not in statuses:
        assert time.time() < deadline, b
        time.sleep(0.1)
    return b


@pytest.mark.slow
def test_chat_batch_answers_each_request_like_the_online_route(server):
    a = client(server)
    questions = [f"How do I reset my router? ({i})" for i in range(5)]
    lines = [chat_line(f"q{i}", q, temperature=0) for i, q in enumerate(questions)]
    lines.append(chat_line("bad-temperature", "hi", temperature=5))
    lines.append(chat_line("no-model", "hi", model="nope"))
    f = a.files.create(file=("requests.jsonl", jsonl(lines)), purpose="batch")
    assert f.purpose == "batch" and f.expires_at == f.created_at + 30 * 24 * 3600  # OpenAI's default for batch
    batch = a.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"run": "eval-1"}
    )
    assert batch.status in ("validating", "in_progress") and batch.metadata == {"run": "eval-1"}
    done = wait(a, batch.id, ("completed", "failed"))
    assert done.status == "completed" and done.completed_at >= done.in_progress_at >= done.created_at
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (7, 5, 2)
    out = [json.loads(x) for x in a.files.content(done.output_file_id).read().splitlines()]
    assert sorted(r["custom_id"] for r in out) == [f"q{i}" for i in range(5)]
    for r in out:  # the same answer an online request gets (greedy)
        assert r["response"]["status_code"] == 200 and r["error"] is None
        online = a.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": questions[int(r["custom_id"][1:])]}],
            max_tokens=6,
            temperature=0,
        )
        assert r["response"]["body"]["choices"][0]["message"]["content"] == online.choices[0].message.content
    errors = {
        json.loads(x)["custom_id"]: json.loads(x) for x in a.files.content(done.error_file_id).read().splitlines()
    }
    assert errors["bad-temperature"]["response"]["status_code"] == 400
    assert errors["bad-temperature"]["response"]["body"]["error"]["param"] == "temperature"
    assert errors["no-model"]["response"]["status_code"] == 404
    assert batch.id in [b.id for b in a.batches.list()]
    b = client(server, server["b"])
    with pytest.raises(openai.NotFoundError):
        b.batches.retrieve(batch.id)
    assert batch.id not in [x.id for x in b.batches.list()]
    with pytest.raises(openai.ConflictError):
        a.batches.cancel(batch.id)


@pytest.mark.slow  # loads MiniLM
def test_embeddings_batch(server):
    a = client(server)
    lines = [
        {"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings", "body": {"model": "minilm", "input": t}}
        for i, t in enumerate(["router reset", "warranty length"])
    ]
    f = a.files.create(file=("emb.jsonl", jsonl(lines)), purpose="batch")
    with pytest.raises(openai.BadRequestError) as exc:  # every line's url must be the batch's endpoint
        a.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert exc.value.body["param"] == "endpoint"
    done = wait(
        a, a.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h").id, ("completed",)
    )
    out = {json.loads(x)["custom_id"]: json.loads(x) for x in a.files.content(done.output_file_id).read().splitlines()}
    online = a.embeddings.create(model="minilm", input="router reset").data[0].embedding
    assert out["e0"]["response"]["body"]["data"][0]["embedding"] == pytest.approx(online, abs=1e-6)


def test_batch_input_checks(server):
    a = client(server)
    bad = [chat_line("x", "hi"), chat_line("x", "again"), {"custom_id": "y", "method": "GET", "url": "/v1/models"}]
    with pytest.raises(openai.BadRequestError) as exc:
        a.files.create(file=("bad.jsonl", jsonl(bad) + b"{oops\n"), purpose="batch")
    message = exc.value.body["message"]
    assert "Line 2" in message and "used twice" in message and "Line 3" in message and "Line 4" in message
    tuning = a.files.create(file=("t.jsonl", jsonl([{"prompt": "a b c", "completion": " d e f"}])), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as exc:
        a.batches.create(input_file_id=tuning.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert exc.value.body["param"] == "input_file_id" and "purpose 'batch'" in exc.value.body["message"]
    good = a.files.create(file=("g.jsonl", jsonl([chat_line("a", "hi")])), purpose="batch")
    for kwargs, param in (
        ({"endpoint": "/v1/responses", "completion_window": "24h"}, "endpoint"),
        ({"endpoint": "/v1/chat/completions", "completion_window": "1h"}, "completion_window"),
    ):
        with pytest.raises(openai.BadRequestError) as exc:
            a.batches.create(input_file_id=good.id, **kwargs)
        assert exc.value.body["param"] == param
    with pytest.raises(openai.NotFoundError):
        client(server, server["b"]).batches.create(
            input_file_id=good.id, endpoint="/v1/chat/completions", completion_window="24h"
        )


def test_cancel_stops_a_running_batch_and_keeps_what_was_answered(server):
    a = client(server)
    lines = [chat_line(f"c{i}", f"Tell me about product {i}", max_tokens=48) for i in range(60)]
    f = a.files.create(file=("many.jsonl", jsonl(lines)), purpose="batch")
    batch = a.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait(a, batch.id, ("in_progress",))
    cancelling = a.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at is not None
    done = wait(a, batch.id, ("cancelled",))
    answered = done.request_counts.completed + done.request_counts.failed
    assert answered < 60 and done.cancelled_at >= done.cancelling_at
    if done.output_file_id:
        assert len(a.files.content(done.output_file_id).read().splitlines()) == done.request_counts.completed
