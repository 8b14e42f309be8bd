"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` + status."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from tuneforge.errors import TuneforgeError
from tuneforge.serve.ids import new_id

log = logging.getLogger(__name__)


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code, self.details = (
            status,
            message,
            type,
            param,
            code,
            details,
        )

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    details: Any = None


class ErrorResponse(BaseModel):
    """Every error the API answers: OpenAI's `{"error": {...}}`."""

    error: ErrorDetail


ERROR_TEXT = {
    400: "Invalid request: a field named by `param` is wrong (validation errors are 400s too, never 422)",
    401: "Missing or invalid API key",
    403: "Not allowed for this object",
    404: "No such object in the caller's project",
    409: "The object is not in a state that allows this",
    413: "The request body or file is over the server's limit",
    503: "The service is not ready",
}


def declared(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: the error statuses it sends, each with the error model."""
    return {code: {"model": ErrorResponse, "description": ERROR_TEXT[code]} for code in statuses}


NAMING = {"model", "training_file", "validation_file", "input_file_id", "file_id", "ids"}  # body fields naming objects


def _statuses(route: APIRoute) -> set[int]:
    """What any route sends by its shape: 400 for bad input (the app maps validation errors to 400),
    401 when it needs a key, 404 when it names an object (path ids, or a body field naming models or files),
    413 when it has a body (BodyLimit caps every body)."""

    def calls(dep, fn) -> bool:
        return dep.call is fn or any(calls(d, fn) for d in dep.dependencies)

    from tuneforge.serve.api.deps import principal

    has_input = bool(route.dependant.path_params or route.dependant.query_params or route.body_field)
    has_body = bool(route.methods & {"POST", "PUT", "PATCH"})
    out = {400} if has_input or has_body else set()
    if calls(route.dependant, principal):
        out |= {400, 401}
    body = route.body_field.field_info.annotation if route.body_field is not None else None
    if route.dependant.path_params or NAMING & set(getattr(body, "model_fields", ())):
        out.add(404)
    if has_body:
        out.add(413)
    return out


def _api_routes(routes):
    """The app's APIRoutes, also inside included routers (FastAPI keeps those as a lazy wrapper)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):
            yield from _api_routes(route.original_router.routes)


def openapi_with_errors(app: FastAPI):
    """The app's OpenAPI without FastAPI's 422 (never sent: validation errors are 400s) and with the error
    statuses every route really sends, in OpenAI's error shape."""

    def schema() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        ref = {"$ref": "#/components/schemas/ErrorResponse"}
        doc.setdefault("components", {}).setdefault("schemas", {})
        for name, model in (("ErrorResponse", ErrorResponse), ("ErrorDetail", ErrorDetail)):
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            model_schema.pop("$defs", None)
            doc["components"]["schemas"].setdefault(name, model_schema)
        by_id = {route.unique_id: route for route in _api_routes(app.routes)}
        for ops in doc["paths"].values():
            for op in ops.values():
                responses = op.setdefault("responses", {})
                responses.pop("422", None)
                route = by_id.get(op.get("operationId"))
                for code in sorted(_statuses(route) if route is not None else ()):
                    responses.setdefault(
                        str(code),
                        {"description": ERROR_TEXT[code], "content": {"application/json": {"schema": ref}}},
                    )
        for name in ("HTTPValidationError", "ValidationError"):
            doc["components"]["schemas"].pop(name, None)
        app.openapi_schema = doc
        return doc

    return schema


def not_found(kind: str, object_id: str, param: str | None = None) -> APIError:
    # Another project's object is reported exactly like a missing one: ids do not leak.
    return APIError(404, f"No such {kind} object: {object_id}", param=param, code="not_found")


def from_tuneforge(exc: TuneforgeError, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(
        400,
        str(exc),
        param=param,
        code=code,
        details=[{"where": p.where, "message": p.message, "fix": p.fix} for p in exc.problems] or None,
    )


def internal_error(exc: BaseException, where: str) -> APIError:
    """A 500 for what is not the caller's fault (a broken model folder, a bug). The exception text
    can name server paths or another project's objects, so it goes to the server log under a fresh
    id; the client gets only that id, which an operator finds in the log."""
    error_id = new_id("err_", 8)
    log.error("error %s on %s", error_id, where, exc_info=exc)
    message = f"The server had an error while processing your request (error id {error_id})."
    return APIError(500, message, type="server_error", code="internal_error", details={"error_id": error_id})


def as_api_error(exc: BaseException, where: str) -> APIError:
    """The client's view of any exception: an API error as raised, a user's mistake with its problems,
    anything else as an internal error (logged, not shown)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, TuneforgeError):
        return from_tuneforge(exc)
    return internal_error(exc, where)


class AnswerBugs:
    """ASGI middleware: an unexpected exception becomes the logged 500 here. Starlette's outermost
    error middleware also answers a 500 but then re-raises, and uvicorn closes the keep-alive
    connection, so the client's next request on it was reset."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:  # half a response is out: only closing the connection can tell the client
                raise
            err = internal_error(exc, f"{scope.get('method')} {scope.get('path')}")
            await JSONResponse(err.body(), status_code=err.status)(scope, receive, send)


def install(app: FastAPI) -> None:
    app.add_middleware(AnswerBugs)
    app.openapi = openapi_with_errors(app)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(TuneforgeError)
    async def _user_error(_: Request, exc: TuneforgeError) -> JSONResponse:
        err = from_tuneforge(exc)
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"] if p not in ("body", "query", "path")]
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
        return JSONResponse(APIError(400, message, param=".".join(loc) or None).body(), status_code=400)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        err = internal_error(exc, f"{request.method} {request.url.path}")
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(APIError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)
