"""Request body limits, enforced before a route parses anything.

Without them a 10 MB chat body was parsed, tokenized and held in memory (the server grew to
4.7 GB). A body over its limit is a 413 naming the limit: refused by Content-Length before it
is read, or as soon as a chunked body passes the limit.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tuneforge.serve.api.errors import APIError
from tuneforge.serve.settings import ServeSettings

MULTIPART_OVERHEAD = 64 * 1024  # boundaries and the purpose field around an uploaded file


def body_limit(settings: ServeSettings) -> Callable[[str], int]:
    """The body limit of a path (uploads have their own)."""

    def limit(path: str) -> int:
        return settings.max_upload_bytes + MULTIPART_OVERHEAD if _upload(path) else settings.max_request_bytes

    return limit


def _upload(path: str) -> bool:
    path = path.rstrip("/")
    return path == "/v1/files" or (path.startswith("/v1/uploads/") and path.endswith("/parts"))  # parts: 64 MB each


def too_large(path: str, limit: int) -> APIError:
    if _upload(path):
        limit -= MULTIPART_OVERHEAD
        message = f"File is larger than the limit of {limit} bytes (set TUNEFORGE_MAX_UPLOAD_MB to raise it)."
        return APIError(413, message, param="file", code="file_too_large")
    return APIError(
        413,
        f"The request body is larger than this server's limit of {limit} bytes (the operator "
        "raises it with TUNEFORGE_MAX_REQUEST_MB).",
        code="request_too_large",
    )


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a 413 for a body over `limit_for(path)` bytes."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app, self.limit_for = app, limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await self._refuse(limit, scope, receive, send)
            return
        seen, over = 0, False

        async def counted() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = True
                    raise _TooLarge
            return message

        async def quiet_once_over(message: Message) -> None:
            if not over:  # the route's own answer to the aborted read (FastAPI: a 400) is replaced by the 413
                await send(message)

        try:
            await self.app(scope, counted, quiet_once_over)
        except Exception:
            if not over:
                raise
        if over:
            await self._refuse(limit, scope, receive, send)

    @staticmethod
    async def _refuse(limit: int, scope: Scope, receive: Receive, send: Send) -> None:
        from fastapi.responses import JSONResponse

        err = too_large(scope["path"], limit)
        await JSONResponse(err.body(), status_code=413, headers={"Connection": "close"})(scope, receive, send)
