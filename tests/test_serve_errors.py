"""What a client sees when the server fails: an error id and a generic message, never the exception
text (server paths); the text and traceback go to the server log under that id."""

from __future__ import annotations

import logging

import httpx2 as httpx
from fastapi import FastAPI

from helpers import serve_in_thread
from tuneforge.errors import DataError, Problem
from tuneforge.serve.api import errors

SECRET = "/srv/tuneforge/projects/proj-other/models/ft-1/adapter_model.safetensors"


def _failing_app() -> FastAPI:
    app = FastAPI()
    errors.install(app)

    @app.get("/boom")
    async def boom() -> dict:
        raise OSError(f"cannot read {SECRET}")

    return app


def test_a_500_body_holds_an_error_id_not_the_exception_text(caplog):
    with caplog.at_level(logging.ERROR, logger=errors.__name__), serve_in_thread(_failing_app()) as url:
        r = httpx.get(url + "/boom")
    assert r.status_code == 500
    error = r.json()["error"]
    assert SECRET not in r.text and "OSError" not in r.text and "/srv" not in r.text
    assert error["type"] == "server_error" and error["code"] == "internal_error"
    error_id = error["details"]["error_id"]
    assert error_id.startswith("err_") and error_id in error["message"]
    logged = [rec for rec in caplog.records if rec.name == errors.__name__ and error_id in rec.getMessage()]
    assert len(logged) == 1 and "GET /boom" in logged[0].getMessage()
    assert logged[0].exc_info is not None and SECRET in str(logged[0].exc_info[1])  # the operator has it


def test_each_failure_gets_its_own_id(caplog):
    with caplog.at_level(logging.ERROR, logger=errors.__name__):
        ids = {errors.internal_error(RuntimeError(SECRET), "test").details["error_id"] for _ in range(5)}
    assert len(ids) == 5


def test_streamed_errors_keep_a_users_mistake_and_hide_a_bug(caplog):
    mistake = DataError("bad training file", [Problem("train.jsonl:3", "no messages", "add a messages list")])
    shown = errors.as_api_error(mistake, "a streamed response")
    assert shown.status == 400 and "bad training file" in shown.message and shown.details[0]["where"] == "train.jsonl:3"
    with caplog.at_level(logging.ERROR, logger=errors.__name__):
        hidden = errors.as_api_error(RuntimeError(SECRET), "a streamed response").body()
    assert hidden["error"]["type"] == "server_error" and SECRET not in str(hidden)
    assert errors.as_api_error(errors.not_found("model", "m-1"), "x").status == 404
