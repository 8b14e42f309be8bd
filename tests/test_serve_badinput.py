"""Malformed requests are 400s naming the field, never 500s, and the keep-alive connection they
came on keeps working; deleting the only loaded LoRA adapter of a base leaves the base usable."""

from __future__ import annotations

import http.client
import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from helpers import install_tiny_demo, serve_in_thread, write_chat_jsonl
from tuneforge.serve import keys
from tuneforge.serve.app import create_app
from tuneforge.serve.db import Store
from tuneforge.serve.settings import ServeSettings
from tuneforge.serve.tables import FineTunedModel


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("TUNEFORGE_HOME", str(home))
    install_tiny_demo(home)
    settings = ServeSettings(database_url=f"sqlite:///{home / 'tf.db'}", data_dir=home / "serve", inference_threads=1)
    store = Store(settings.database_url)
    app = create_app(settings, store)
    with serve_in_thread(app) as url:
        _, key = keys.create_key(store, "alpha")
        yield {"url": url, "key": key, "home": home, "store": store, "app": app}
    mp.undo()
    store.dispose()


class KeepAlive:
    """One HTTP/1.1 connection; `closed_by_server` tells whether the server ended it after a response."""

    def __init__(self, server) -> None:
        self.conn = http.client.HTTPConnection(server["url"].removeprefix("http://"), timeout=60)
        self.auth = {"Authorization": f"Bearer {server['key']}", "Content-Type": "application/json"}

    def post(self, path: str, body: str) -> tuple[int, dict]:
        self.conn.request("POST", path, body=body.encode(), headers=self.auth)
        r = self.conn.getresponse()
        return r.status, json.loads(r.read() or b"{}")

    def get(self, path: str) -> tuple[int, dict]:
        self.conn.request("GET", path, headers=self.auth)
        r = self.conn.getresponse()
        return r.status, json.loads(r.read() or b"{}")


def chat(content, **extra) -> str:
    return json.dumps({"model": "demo", "max_tokens": 2, "messages": [{"role": "user", "content": content}], **extra})


BAD_CHAT = [
    (chat(["hi"]), "messages[0].content[0]"),
    (chat([None]), "messages[0].content[0]"),
    (chat([{"type": "text", "text": 5}]), "messages[0].content[0].text"),
    (chat("\ud800"), "messages[0].content"),
    (json.dumps({"model": "demo\udc00", "messages": [{"role": "user", "content": "hi"}]}), "model"),
    (chat("hi", seed=2**70), "seed"),
]


@pytest.mark.parametrize(
    ("body", "param"), BAD_CHAT, ids=["str-part", "null-part", "int-text", "surrogate", "model", "seed"]
)
def test_bad_chat_input_is_a_400_naming_the_field_and_the_connection_survives(server, body, param):
    c = KeepAlive(server)
    status, out = c.post("/v1/chat/completions", body)
    assert status == 400, out
    assert out["error"]["param"] == param
    sock = c.conn.sock
    assert sock is not None  # the server kept the connection open
    assert c.get("/v1/models")[0] == 200
    assert c.conn.sock is sock  # and the next request went over the same one


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "user", "content": ["hi"]}], "messages[0].content[0]"),
        ([{"role": "user", "content": [None]}], "messages[0].content[0]"),
        ([{"role": "user", "content": [{"type": "text", "text": 5}]}], "messages[0].content[0].text"),
        ([{"role": "user", "content": "\ud800"}], "messages[0].content"),
    ],
)
def test_bad_feedback_content_is_a_400(server, messages, param):
    body = json.dumps({"model": "demo", "messages": messages, "correction": "ok"})
    status, out = KeepAlive(server).post("/v1/feedback", body)
    assert status == 400 and out["error"]["param"] == param


def test_empty_completion_prompt_is_a_400(server):
    c = KeepAlive(server)
    for prompt in ("", ["hi", ""]):
        status, out = c.post("/v1/completions", json.dumps({"model": "demo", "prompt": prompt, "max_tokens": 2}))
        assert status == 400 and out["error"]["param"] == "prompt"


def test_bad_job_bodies_are_400s(server, tmp_path):
    import openai

    path = tmp_path / "train.jsonl"
    write_chat_jsonl(path, 20)
    client = openai.OpenAI(base_url=server["url"] + "/v1", api_key=server["key"], max_retries=0)
    file_id = client.files.create(file=path.open("rb"), purpose="fine-tune").id
    c = KeepAlive(server)
    base = {"model": "demo", "training_file": file_id}
    for extra, param in (
        ({"seed": 2**63}, "seed"),
        ({"tuneforge": {"model": "x"}}, "tuneforge.model"),
        ({"tuneforge": {"train": 5}}, "tuneforge.train"),
    ):
        status, out = c.post("/v1/fine_tuning/jobs", json.dumps({**base, **extra}))
        assert status == 400, out
        assert out["error"]["param"] == param


def test_a_bug_is_a_500_with_an_error_id_and_the_connection_survives(server):
    def boom():
        raise RuntimeError("/secret/server/path")

    server["app"].add_api_route("/v1/test-boom", boom, methods=["POST"])
    c = KeepAlive(server)
    status, out = c.post("/v1/test-boom", "{}")
    assert status == 500 and "error_id" in out["error"]["details"] and "/secret" not in json.dumps(out)
    sock = c.conn.sock
    assert sock is not None and c.get("/v1/models")[0] == 200 and c.conn.sock is sock


def save_lora(home, name: str) -> str:
    torch.manual_seed(1)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(home / "models" / "demo"), lora)
    folder = home / "adapters" / name
    model.save_pretrained(folder)
    return str(folder)


def test_deleting_the_only_loaded_adapter_leaves_its_base_working(server):
    store, home = server["store"], server["home"]
    project = keys.authenticate(store, server["key"]).project_id
    model_id = "ft:demo:only:abc12345"
    with store.session() as s:
        s.add(
            FineTunedModel(
                id=model_id,
                project_id=project,
                job_id="ftjob-x",
                base_model="demo",
                kind="adapter",
                path=save_lora(home, "only"),
                created_at=0,
            )
        )
    c = KeepAlive(server)
    before = c.post("/v1/chat/completions", chat("Where is my parcel?", temperature=0))
    assert before[0] == 200
    assert (
        c.post(
            "/v1/chat/completions",
            json.dumps({"model": model_id, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}),
        )[0]
        == 200
    )
    c.conn.request("DELETE", f"/v1/models/{model_id}", headers=c.auth)
    assert c.conn.getresponse().read() and True
    after = c.post("/v1/chat/completions", chat("Where is my parcel?", temperature=0))
    assert after[0] == 200, after
    assert after[1]["choices"][0]["message"] == before[1]["choices"][0]["message"]  # the base, unchanged
    assert model_id not in server["app"].state.services.engine.loaded()
