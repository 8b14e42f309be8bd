"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` + status."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tuneforge.errors import TuneforgeError


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code, self.details = status, message, type, param, code, details

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}


def not_found(kind: str, object_id: str, param: str | None = None) -> APIError:
    # Another project's object is reported exactly like a missing one: ids do not leak.
    return APIError(404, f"No such {kind} object: {object_id}", param=param, code="not_found")


def from_tuneforge(exc: TuneforgeError, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, str(exc), param=param, code=code, details=[{"where": p.where, "message": p.message, "fix": p.fix} for p in exc.problems] or None)


def install(app: FastAPI) -> None:
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
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        # Not the caller's fault (a broken model folder, a bug): say what failed, keep the shape.
        body = APIError(500, f"The server had an error while processing your request: {type(exc).__name__}: {exc}", type="server_error").body()
        return JSONResponse(body, status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(APIError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)
