"""The web console: a static shell, ES modules and CSS served at / (no build step, no CDN).

The pages call only the /v1 API with the project key in an `Authorization: Bearer` header kept in
`sessionStorage`, so the console has no session, cookie or route of its own that could bypass the
API's checks. The strict Content-Security-Policy allows scripts from this server only: an injected
`<script>` or `onerror=` in a file name or chat text could not run even if a page failed to escape it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
CSP = (
    "default-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; frame-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)  # inline styles: the eval report (shown in a sandboxed frame) carries its own <style>
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


class _Static(StaticFiles):
    async def get_response(self, path, scope):
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


def install(app: FastAPI) -> None:
    """Serve the console at / (index.html) and its files under /console/."""

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=HEADERS)

    @app.get("/console", include_in_schema=False)
    def console() -> RedirectResponse:
        return RedirectResponse("/")

    app.mount("/console", _Static(directory=STATIC), name="console")
