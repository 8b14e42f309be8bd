"""The stored feedback review: accept / reject / edit through POST /v1/feedback/{id} (the original correction is
kept), the queue as GET /v1/feedback?status=pending, the export of accepted items only (with the edit), project
isolation, located 400s and 404s, and migration 0004 upgrading a database with feedback on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import httpx2 as httpx
import pytest
from sqlalchemy import text

from helpers import postgres_schema, tiny_service
from tuneforge.serve import keys


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with tiny_service(home) as (url, store, app, _settings):
        _, key_a = keys.create_key(store, "alpha")
        _, key_b = keys.create_key(store, "beta")
        yield {
            "url": url,
            "app": app,
            "a": {"Authorization": f"Bearer {key_a}"},
            "b": {"Authorization": f"Bearer {key_b}"},
        }


def _call(server, method: str, path: str, who: str = "a", **kw) -> httpx.Response:
    return httpx.request(method, server["url"] + path, headers=server[who], **kw)


def _feedback(server, n: int, who: str = "a", tag: str = "q") -> list[str]:
    ids = []
    for i in range(n):
        body = {
            "model": "demo",
            "messages": [{"role": "user", "content": f"{tag} {i}?"}],
            "completion": "no idea",
            "correction": f"answer {tag} {i}",
        }
        r = _call(server, "POST", "/v1/feedback", who, json=body)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "pending" and r.json()["reviewed_at"] is None
        ids.append(r.json()["id"])
    return ids


def _review(server, fb_id: str, who: str = "a", **body) -> httpx.Response:
    return _call(server, "POST", f"/v1/feedback/{fb_id}", who, json=body)


def _lines(server, file_id: str) -> list[dict]:
    content = _call(server, "GET", f"/v1/files/{file_id}/content").text
    return [json.loads(line) for line in content.splitlines()]


def test_accept_reject_and_edit_are_stored_and_the_original_is_kept(server):
    ids = _feedback(server, 3, tag="review")
    accepted = _review(server, ids[0], status="accepted").json()
    assert accepted["status"] == "accepted" and accepted["reviewed_at"] > 0 and accepted["edited_correction"] is None
    rejected = _review(server, ids[1], status="rejected").json()
    assert rejected["status"] == "rejected"
    edited = _review(server, ids[2], correction="a better answer").json()
    assert edited["status"] == "pending"  # an edit alone leaves it in the queue
    assert (edited["correction"], edited["edited_correction"]) == ("answer review 2", "a better answer")

    listed = {f["id"]: f for f in _call(server, "GET", "/v1/feedback?limit=10000").json()["data"]}
    assert [listed[i]["status"] for i in ids] == ["accepted", "rejected", "pending"]
    assert (
        listed[ids[2]]["correction"] == "answer review 2" and listed[ids[2]]["edited_correction"] == "a better answer"
    )
    pending = [f["id"] for f in _call(server, "GET", "/v1/feedback?status=pending&limit=10000").json()["data"]]
    assert ids[2] in pending and ids[0] not in pending and ids[1] not in pending

    # Accept with an edit at once; an edit equal to the original is no edit; null drops the edit.
    both = _review(server, ids[2], status="accepted", correction="the best answer").json()
    assert (both["status"], both["edited_correction"], both["correction"]) == (
        "accepted",
        "the best answer",
        "answer review 2",
    )
    assert _review(server, ids[2], correction="answer review 2").json()["edited_correction"] is None
    _review(server, ids[2], correction="again edited")
    assert _review(server, ids[2], correction=None).json()["edited_correction"] is None
    back = _review(server, ids[1], status="pending").json()  # a rejected item can go back to the queue
    assert back["status"] == "pending" and back["correction"] == "answer review 1"


def test_export_takes_only_the_accepted_ones_with_their_edits_and_counts_the_rest(server):
    ids = _feedback(server, 13, tag="export")
    for i in ids[:10]:
        assert _review(server, i, status="accepted").status_code == 200
    _review(server, ids[0], correction="edited export 0")
    _review(server, ids[10], status="rejected")
    _review(server, ids[11], correction="edited but still pending")  # not accepted: not exported

    f = _call(server, "POST", "/v1/feedback/export", json={"ids": ids, "filename": "reviewed.jsonl"}).json()
    assert f["object"] == "file" and f["purpose"] == "fine-tune" and f["filename"] == "reviewed.jsonl"
    assert (f["exported"], f["skipped"], f["skipped_by_status"]) == (10, 3, {"pending": 2, "rejected": 1})
    rows = _lines(server, f["id"])
    answers = [r["messages"][-1]["content"] for r in rows]
    assert answers == ["edited export 0", *[f"answer export {i}" for i in range(1, 10)]]  # in the ids' order
    assert rows[1]["messages"][0] == {"role": "user", "content": "export 1?"}
    assert "edited but still pending" not in json.dumps(rows)

    # Saying otherwise: pending ones too (the rejected one stays out), the edit used where there is one.
    more = _call(server, "POST", "/v1/feedback/export", json={"ids": ids, "include": ["accepted", "pending"]}).json()
    assert (more["exported"], more["skipped_by_status"]) == (12, {"rejected": 1})
    assert "edited but still pending" in [r["messages"][-1]["content"] for r in _lines(server, more["id"])]

    # Without ids: every accepted item of the project (this module's others included), never a pending one.
    everything = _call(server, "POST", "/v1/feedback/export", json={"model": "demo"}).json()
    stored = _call(server, "GET", "/v1/feedback?limit=10000").json()["data"]
    assert everything["exported"] == sum(s["status"] == "accepted" for s in stored)
    assert everything["exported"] + everything["skipped"] == len(stored)


def test_nothing_accepted_is_a_400_that_says_what_was_skipped(server):
    ids = _feedback(server, 2, tag="none")
    _review(server, ids[1], status="rejected")
    r = _call(server, "POST", "/v1/feedback/export", json={"ids": ids})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "include" and err["code"] == "no_feedback"
    assert "1 pending, 1 rejected" in err["message"]


def test_another_projects_feedback_is_a_404_and_never_listed(server):
    (mine,) = _feedback(server, 1, tag="isolation")
    stolen = _review(server, mine, "b", status="rejected")
    assert stolen.status_code == 404 and stolen.json()["error"]["param"] == "feedback_id"
    assert _review(server, mine, "b", correction="x").status_code == 404
    assert _call(server, "GET", "/v1/feedback", "b").json()["data"] == []
    export = _call(server, "POST", "/v1/feedback/export", "b", json={"ids": [mine]})
    assert export.status_code == 404 and export.json()["error"]["param"] == "ids"
    assert _call(server, "POST", "/v1/feedback/export", "b", json={}).status_code == 400  # b has none
    after = next(f for f in _call(server, "GET", "/v1/feedback?limit=10000").json()["data"] if f["id"] == mine)
    assert (after["status"], after["edited_correction"]) == ("pending", None)  # untouched


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"status": "approved"}, "status"),
        ({"status": None}, "status"),
        ({}, "status"),
        ({"correction": "   "}, "correction"),
        ({"correction": 5}, "correction"),
        ({"status": "accepted", "note": "x"}, "note"),
    ],
)
def test_a_bad_review_is_a_400_naming_the_field(server, body, param):
    (fb,) = _feedback(server, 1, tag="bad")
    r = _review(server, fb, **body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    stored = next(f for f in _call(server, "GET", "/v1/feedback?limit=10000").json()["data"] if f["id"] == fb)
    assert (stored["status"], stored["edited_correction"], stored["reviewed_at"]) == ("pending", None, None)


def test_bad_queries_and_unknown_ids(server):
    r = _call(server, "GET", "/v1/feedback?status=done")
    assert r.status_code == 400 and r.json()["error"]["param"] == "status"
    r = _call(server, "POST", "/v1/feedback/export", json={"include": ["done"]})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("include")
    r = _review(server, "fb-nope", status="accepted")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = _call(server, "POST", "/v1/feedback/export", json={"ids": ["fb-nope"]})
    assert r.status_code == 404 and "fb-nope" in r.json()["error"]["message"]
    # The console's second way (/v1/tuneforge/feedback/...) is gone: one owner.
    assert _call(server, "POST", "/v1/tuneforge/feedback/export", json={"ids": ["x"]}).status_code == 404


def test_the_review_route_declares_its_errors_in_openapi(server):
    doc = server["app"].openapi()
    review = doc["paths"]["/v1/feedback/{feedback_id}"]["post"]
    for code in ("400", "404"):
        assert review["responses"][code]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"
        }
    assert "422" not in review["responses"]
    statuses = doc["paths"]["/v1/feedback"]["get"]["parameters"]
    assert next(p for p in statuses if p["name"] == "status")["schema"]["anyOf"][0]["enum"] == [
        "pending",
        "accepted",
        "rejected",
    ]


def _upgrade(engine, target: str) -> None:
    from alembic import command
    from alembic.config import Config

    from tuneforge.serve.db import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if target.startswith("-") else command.upgrade)(cfg, target.lstrip("-"))


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_migration_0004_keeps_stored_feedback_and_starts_it_pending(db, tmp_path):
    from contextlib import nullcontext

    from tuneforge.serve.db import make_engine

    with postgres_schema() if db == "postgres" else nullcontext(f"sqlite:///{tmp_path / 'old.db'}") as url:
        engine = make_engine(url)
        try:
            _upgrade(engine, "0003")
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO projects VALUES ('proj-1', 'team', 0)"))
                conn.execute(
                    text(
                        "INSERT INTO feedback (id, project_id, model, messages, completion, correction, rating, "
                        "created_at) VALUES ('fb-1', 'proj-1', 'demo', :m, 'no', 'yes', 1, 5)"
                    ),
                    {"m": json.dumps([{"role": "user", "content": "hi"}])},
                )
            _upgrade(engine, "head")
            with engine.connect() as conn:
                row = conn.execute(
                    text("SELECT correction, status, reviewed_at, edited_correction FROM feedback")
                ).one()
            assert tuple(row) == ("yes", "pending", None, None)
            _upgrade(engine, "-0003")  # and back: the review columns go, the feedback stays
            with engine.connect() as conn:
                assert conn.execute(text("SELECT id, correction FROM feedback")).all() == [("fb-1", "yes")]
            _upgrade(engine, "head")
        finally:
            engine.dispose()
