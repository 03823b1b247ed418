"""The pages a browser opens: the live dashboard at / and the API docs at /docs (no CDN)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import swagger_ui_bundle
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import NotModifiedResponse, StaticFiles
from starlette.types import Scope

from .openapi import build_openapi
from .responses import JSONResponse

STATIC = Path(__file__).parent / "static"

DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tickhub API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="docs"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#docs", deepLinking: true});</script>
</body></html>"""

_OPENAPI = build_openapi()

#: Content types by suffix, stated rather than guessed from the machine's mime.types (a module script
#: is refused unless served as JavaScript); anything else is text.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".png": "image/png",
}
#: A file whose name carries its version (a vendored library) never changes under that name.
VERSIONED = re.compile(r".+-[0-9]+\.[0-9]+\.[0-9]+[.-].+")
CACHE_VERSIONED = "public, max-age=31536000, immutable"
#: The page and its own scripts change with tickhub: browsers ask again, an ETag makes it a 304.
CACHE_OWN = "no-cache"


def static_headers(name: str) -> dict[str, str]:
    """Content type and cache headers for the static file ``name``."""
    return {
        "content-type": CONTENT_TYPES.get(Path(name).suffix, "text/plain; charset=utf-8"),
        "cache-control": CACHE_VERSIONED if VERSIONED.fullmatch(name) else CACHE_OWN,
        "x-content-type-options": "nosniff",
    }


class DashboardFiles(StaticFiles):
    """The dashboard's static files with a fitting content type and cache headers."""

    def file_response(
        self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        headers = static_headers(Path(full_path).name)
        media_type = headers.pop("content-type")
        response = FileResponse(
            full_path, status_code=status_code, headers=headers, media_type=media_type, stat_result=stat_result
        )
        if self.is_not_modified(response.headers, Request(scope).headers):
            return NotModifiedResponse(response.headers)
        return response


async def dashboard(request: Request) -> Response:
    headers = static_headers("dashboard.html")
    return FileResponse(STATIC / "dashboard.html", media_type=headers.pop("content-type"), headers=headers)


async def openapi(request: Request) -> Response:
    return JSONResponse(_OPENAPI)


async def docs(request: Request) -> Response:
    return HTMLResponse(DOCS_PAGE)


ROUTES = [
    Route("/", dashboard),
    Route("/openapi.json", openapi),
    Route("/docs", docs),
    Mount("/docs/static", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-static"),
    Mount("/static", DashboardFiles(directory=STATIC), name="static"),
]
