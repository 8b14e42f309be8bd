"""The console's API routes (/v1/tuneforge/...) and its static files, without a browser: the same figures as
`tuneforge estimate`, errors named by their field, the usage series from the request log, and project isolation."""

from __future__ import annotations

import httpx2 as httpx
import pytest

from helpers import tiny_service, write_chat_jsonl
from tuneforge.serve import keys


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with tiny_service(home) as (url, store, _, _settings):
        _, key_a = keys.create_key(store, "alpha")
        _, key_b = keys.create_key(store, "beta")
        yield {"url": url, "a": {"Authorization": f"Bearer {key_a}"}, "b": {"Authorization": f"Bearer {key_b}"}}


def test_console_shell_is_served_with_a_strict_policy_and_needs_no_other_host(server):
    r = httpx.get(server["url"] + "/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "http://" not in r.text and "https://" not in r.text  # no CDN link in the shell
    for name in ("app.js", "dom.js", "pages/data.js", "pages/playground.js"):
        js = httpx.get(server["url"] + "/console/" + name)
        assert js.status_code == 200 and "javascript" in js.headers["content-type"]
        assert "innerHTML" not in js.text and "script-src 'self'" in js.headers["content-security-policy"]
    assert httpx.get(server["url"] + "/v1/tuneforge/methods").status_code == 401  # the API's own auth


def test_methods_list_their_fields_from_the_config_schema(server):
    data = httpx.get(server["url"] + "/v1/tuneforge/methods", headers=server["a"]).json()["data"]
    lora = next(m for m in data if m["name"] == "lora")
    fields = {f["name"]: f for f in lora["fields"]}
    assert fields["r"]["kind"] == "int" and fields["r"]["default"] == 8
    assert fields["target_modules"]["kind"] == "list" and "all-linear" in fields["target_modules"]["also"]
    assert lora["default"] is True


def test_estimate_equals_tuneforge_estimate_and_names_a_bad_field(server):
    from tuneforge.cli.estimate import method_section
    from tuneforge.methods.estimate import estimate
    from tuneforge.serve.catalog import base_model_path

    body = {"model": "demo", "method": {"name": "lora", "r": 4}, "batch_size": 2, "seq_len": 64}
    got = httpx.post(server["url"] + "/v1/tuneforge/estimate", headers=server["a"], json=body).json()
    want = estimate(base_model_path("demo"), method_section("lora", {"r": 4}), 2, 64)
    assert got["trainable_params"] == want.trainable_params and got["memory_bytes"] == want.memory_bytes
    bad = httpx.post(
        server["url"] + "/v1/tuneforge/estimate", headers=server["a"], json={**body, "method": {"name": "lora", "r": 0}}
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tuneforge.method.r"
    typo = httpx.post(
        server["url"] + "/v1/tuneforge/estimate",
        headers=server["a"],
        json={**body, "method": {"name": "lora", "rank": 4}},
    )
    assert typo.status_code == 400 and "not an option" in typo.json()["error"]["message"]


def test_file_validation_and_token_report_are_the_projects_own(server, tmp_path):
    path = tmp_path / "train.jsonl"
    write_chat_jsonl(path, 12)
    f = httpx.post(
        server["url"] + "/v1/files", headers=server["a"], files={"file": path.open("rb")}, data={"purpose": "fine-tune"}
    ).json()
    v = httpx.get(server["url"] + f"/v1/tuneforge/files/{f['id']}/validation", headers=server["a"]).json()
    assert v["records"] == 12 and v["valid"] == 12 and v["format"] == "chat"
    r = httpx.get(server["url"] + f"/v1/tuneforge/files/{f['id']}/report", headers=server["a"]).json()
    assert r["examples"] == 12 and r["tokens"]["total_tokens"] > 0 and r["cost"]["training_tokens"] > 0
    assert str(tmp_path) not in str(r) and "/serve/" not in str(r)  # no server path
    for route in ("validation", "report"):
        other = httpx.get(server["url"] + f"/v1/tuneforge/files/{f['id']}/{route}", headers=server["b"])
        assert other.status_code == 404


def test_usage_series_counts_requests_per_model_in_buckets(server):
    chat = {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    for _ in range(2):
        assert httpx.post(server["url"] + "/v1/chat/completions", headers=server["a"], json=chat).status_code == 200
    s = httpx.get(server["url"] + "/v1/tuneforge/monitoring/series?bucket_s=60&last=5", headers=server["a"]).json()
    demo = next(m for m in s["data"] if m["model"] == "demo")
    assert len(demo["buckets"]) == 5 and sum(b["requests"] for b in demo["buckets"]) == 2
    assert all(b["mean_latency_ms"] > 0 for b in demo["buckets"] if b["requests"])
    other = httpx.get(server["url"] + "/v1/tuneforge/monitoring/series", headers=server["b"]).json()
    assert other["data"] == []
    bad = httpx.get(server["url"] + "/v1/tuneforge/monitoring/series?bucket_s=0", headers=server["a"])
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "bucket_s"
