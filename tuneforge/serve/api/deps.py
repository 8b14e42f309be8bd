"""Request dependencies: the shared service state and the caller's project."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request

from tuneforge.serve.api.errors import APIError
from tuneforge.serve.db import Store
from tuneforge.serve.keys import Principal, authenticate
from tuneforge.serve.settings import ServeSettings

if TYPE_CHECKING:
    from tuneforge.serve.engine import Engine
    from tuneforge.serve.monitoring import Monitor


@dataclass
class Services:
    store: Store
    settings: ServeSettings
    engine: Engine
    monitor: Monitor


def services(request: Request) -> Services:
    return request.app.state.services


def principal(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise APIError(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            code="missing_api_key",
        )
    who = authenticate(services(request).store, key.strip())
    if who is None:
        raise APIError(
            401,
            f"Incorrect API key provided: {key[:6]}...{key[-4:]}. "
            "Create one with `tuneforge keys create --project NAME`.",
            code="invalid_api_key",
        )
    return who
