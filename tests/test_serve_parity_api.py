"""OpenAI parity of files, uploads, job options and the schema, with the official `openai` client:
multipart uploads, small validation files, expires_after, purposes, hyperparameter ranges named by
OpenAI's fields, integrations, event and list shapes, checkpoint names, and the app's OpenAPI."""

from __future__ import annotations

import hashlib
import io
import json

import httpx2 as httpx
import openai
import pytest
from sqlalchemy import update

from helpers import tiny_service, write_chat_jsonl
from tuneforge.serve import keys
from tuneforge.serve.tables import File


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with tiny_service(home, max_upload_bytes=200_000) as (url, store, app, _):
        _, key_a = keys.create_key(store, "alpha")
        _, key_b = keys.create_key(store, "beta")
        yield {"url": url, "a": key_a, "b": key_b, "home": home, "store": store, "app": app}


def client(server, key: str = "") -> openai.OpenAI:
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=key or server["a"], max_retries=0)


def chat_lines(n: int, seed: int = 0) -> bytes:
    buf = io.StringIO()
    from tuneforge.data.synthetic import support_desk_dataset

    for c in support_desk_dataset(n, seed):
        buf.write(json.dumps(c.to_dict()) + "\n")
    return buf.getvalue().encode()


def test_multipart_upload_joins_parts_in_part_ids_order_and_checks_md5(server):
    a, b = client(server), client(server, server["b"])
    data = chat_lines(20)
    halves = [data[: len(data) // 2], data[len(data) // 2 :]]
    up = a.uploads.create(bytes=len(data), filename="big.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    assert up.status == "pending" and up.expires_at == up.created_at + 3600 and up.file is None
    second = a.uploads.parts.create(up.id, data=halves[1])  # parts may arrive in any order
    first = a.uploads.parts.create(up.id, data=halves[0])
    assert first.object == "upload.part" and first.upload_id == up.id
    with pytest.raises(openai.NotFoundError):
        b.uploads.parts.create(up.id, data=b"x")  # another project's upload
    with pytest.raises(openai.BadRequestError) as exc:
        a.uploads.complete(up.id, part_ids=[first.id])
    assert exc.value.body["code"] == "size_mismatch"
    with pytest.raises(openai.BadRequestError) as exc:
        a.uploads.complete(up.id, part_ids=[first.id, second.id], md5="0" * 32)
    assert exc.value.body["param"] == "md5"
    done = a.uploads.complete(up.id, part_ids=[first.id, second.id], md5=hashlib.md5(data).hexdigest())
    assert done.status == "completed" and done.file.purpose == "fine-tune" and done.file.bytes == len(data)
    assert a.files.content(done.file.id).read() == data
    with pytest.raises(openai.ConflictError):
        a.uploads.parts.create(up.id, data=b"late")
    # Wrong order: the joined file is not JSONL any more, so the check refuses it and the upload stays pending.
    up2 = a.uploads.create(bytes=len(data), filename="x.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    p1, p2 = (a.uploads.parts.create(up2.id, data=h) for h in (halves[0][:7], halves[0][7:] + halves[1]))
    with pytest.raises(openai.BadRequestError):
        a.uploads.complete(up2.id, part_ids=[p2.id, p1.id])
    assert a.uploads.cancel(up2.id).status == "cancelled"
    with pytest.raises(openai.ConflictError):
        a.uploads.complete(up2.id, part_ids=[p1.id, p2.id])


def test_upload_sizes_purposes_and_expiry(server):
    a = client(server)
    with pytest.raises(openai.APIStatusError) as exc:
        a.uploads.create(bytes=10**9, filename="huge.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    assert exc.value.status_code == 413 and exc.value.body["param"] == "bytes"
    up = a.uploads.create(
        bytes=5,
        filename="n.txt",
        mime_type="text/plain",
        purpose="user_data",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    with pytest.raises(openai.APIStatusError) as exc:  # a part cannot be larger than the whole upload
        a.uploads.parts.create(up.id, data=b"0123456789")
    assert exc.value.status_code == 413 and exc.value.body["param"] == "data"
    done = a.uploads.complete(up.id, part_ids=[a.uploads.parts.create(up.id, data=b"hello").id])
    assert done.file.expires_at == done.file.created_at + 3600  # the upload's expires_after goes to its File
    for purpose, why in (("assistants", "Assistants"), ("vision", "text models"), ("evals", "Evals")):
        with pytest.raises(openai.BadRequestError) as exc:
            a.uploads.create(bytes=5, filename="f.jsonl", mime_type="text/jsonl", purpose=purpose)
        assert exc.value.body["param"] == "purpose" and why in exc.value.body["message"]
    with pytest.raises(openai.BadRequestError) as exc:
        a.files.create(
            file=("a.jsonl", b"{}"), purpose="fine-tune", expires_after={"anchor": "created_at", "seconds": 5}
        )
    assert exc.value.body["param"] == "expires_after.seconds"
    f = a.files.create(
        file=("notes.txt", b"free text"), purpose="user_data", expires_after={"anchor": "created_at", "seconds": 7200}
    )
    assert f.purpose == "user_data" and f.expires_at == f.created_at + 7200
    raw = httpx.get(f"{server['url']}/v1/files/{f.id}", headers={"Authorization": f"Bearer {server['a']}"}).json()
    assert None not in raw.values()  # no null where OpenAI's File has a string or integer
    with server["store"].session() as s:  # two hours later
        s.execute(update(File).where(File.id == f.id).values(expires_at=f.created_at - 1))
    with pytest.raises(openai.NotFoundError):
        a.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        a.files.content(f.id)
    assert f.id not in [x.id for x in a.files.list()]


def test_small_validation_file_is_accepted_and_training_files_need_ten(server, tmp_path):
    a = client(server)
    val = a.files.create(file=("val.jsonl", chat_lines(3, seed=2)), purpose="fine-tune")
    assert val.status == "processed"
    train = tmp_path / "train.jsonl"
    write_chat_jsonl(train, 20)
    t = a.files.create(file=train.open("rb"), purpose="fine-tune")
    job = a.fine_tuning.jobs.create(model="demo", training_file=t.id, validation_file=val.id)
    assert job.validation_file == val.id
    a.fine_tuning.jobs.cancel(job.id)
    with pytest.raises(openai.BadRequestError) as exc:
        a.fine_tuning.jobs.create(model="demo", training_file=val.id)
    assert exc.value.body["param"] == "training_file" and "at least 10" in exc.value.body["message"]


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"hyperparameters": {"n_epochs": 51}}, "hyperparameters.n_epochs"),
        ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}}, "method.supervised"),
        ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 257}}}}, "batch_size"),
        ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 2.5}}}}, "batch_size"),
        ({"hyperparameters": {"learning_rate_multiplier": 0}}, "hyperparameters.learning_rate_multiplier"),
        ({"hyperparameters": {"learning_rate_multiplier": 10.5}}, "hyperparameters.learning_rate_multiplier"),
        ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 2.5}}}}, "method.dpo.hyperparameters.beta"),
    ],
)
def test_hyperparameter_ranges_are_openais_and_name_its_field(server, tmp_path, kwargs, param):
    a = client(server)
    train = tmp_path / "train.jsonl"
    write_chat_jsonl(train, 12)
    t = a.files.create(file=train.open("rb"), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as exc:
        a.fine_tuning.jobs.create(model="demo", training_file=t.id, **kwargs)
    assert param in exc.value.body["param"] and "at most" in exc.value.body["message"]


def test_integrations_refused_naming_report_to_and_job_shapes(server, tmp_path):
    a = client(server)
    train = tmp_path / "train.jsonl"
    write_chat_jsonl(train, 12)
    t = a.files.create(file=train.open("rb"), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as exc:
        a.fine_tuning.jobs.create(
            model="demo", training_file=t.id, integrations=[{"type": "wandb", "wandb": {"project": "p"}}]
        )
    assert exc.value.body["param"] == "integrations[0].type" and "report_to" in exc.value.body["message"]
    job = a.fine_tuning.jobs.create(model="demo", training_file=t.id, hyperparameters={"n_epochs": 50})
    assert job.hyperparameters.n_epochs == 50 and job.estimated_finish is None  # not running
    events = a.fine_tuning.jobs.list_events(job.id).data
    assert events and all(e.data == {} for e in events if e.type == "message")
    head = {"Authorization": f"Bearer {server['a']}"}
    empty = httpx.get(f"{server['url']}/v1/fine_tuning/jobs/{job.id}/checkpoints", headers=head).json()
    assert empty["data"] == [] and "first_id" not in empty and "last_id" not in empty
    paused = a.fine_tuning.jobs.pause(job.id)
    assert paused.status == "paused" and paused.model_extra["tuneforge"]["openai_status"] == "queued"
    a.fine_tuning.jobs.cancel(job.id)
    listed = httpx.get(f"{server['url']}/v1/files?purpose=nothing", headers=head).json()
    assert listed["data"] == [] and listed["first_id"] == "" and listed["last_id"] == ""


def test_checkpoint_names_are_refused_in_chat_with_the_model_to_use(server):
    from tuneforge.serve.tables import FineTunedModel

    with server["store"].session() as s:
        project = keys.authenticate(server["store"], server["a"]).project_id
        s.add(
            FineTunedModel(
                id="ft:demo:alpha:x:abcd1234",
                project_id=project,
                job_id="ftjob-abcd1234",
                base_model="demo",
                kind="model",
                path=str(server["home"] / "models" / "demo"),
                created_at=1,
            )
        )
    a = client(server)
    with pytest.raises(openai.BadRequestError) as exc:
        a.chat.completions.create(
            model="ft:demo:alpha:x:abcd1234:ckpt-step-5", messages=[{"role": "user", "content": "hi"}]
        )
    assert (
        exc.value.body["code"] == "checkpoint_not_served" and "'ft:demo:alpha:x:abcd1234'" in exc.value.body["message"]
    )
    with pytest.raises(openai.NotFoundError):  # not this project's model: no hint that it exists
        client(server, server["b"]).chat.completions.create(
            model="ft:demo:alpha:x:abcd1234:ckpt-step-5", messages=[{"role": "user", "content": "hi"}]
        )


def test_openapi_declares_the_errors_each_route_sends_and_no_422(server):
    doc = httpx.get(server["url"] + "/openapi.json").json()
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            assert "422" not in codes, (method, path)
            if path.startswith("/v1/"):
                assert {"400", "401"} <= codes, (method, path)
            if method == "post":
                assert "413" in codes, (method, path)
            if "{" in path:
                assert "404" in codes, (method, path)
    assert "409" in doc["paths"]["/v1/uploads/{upload_id}/complete"]["post"]["responses"]
    assert "404" in doc["paths"]["/v1/batches"]["post"]["responses"]  # input_file_id names a file
    assert "404" not in doc["paths"]["/v1/uploads"]["post"]["responses"]  # names nothing
    assert doc["paths"]["/v1/files"]["get"]["responses"]["401"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }
