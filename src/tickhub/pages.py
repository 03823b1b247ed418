"""The pages a browser opens: the live dashboard at / and the API docs at /docs (no CDN)."""

from __future__ import annotations

from pathlib import Path

import swagger_ui_bundle
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

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


async def dashboard(request: Request) -> Response:
    return FileResponse(STATIC / "dashboard.html", media_type="text/html")


async def openapi(request: Request) -> Response:
    return JSONResponse(_OPENAPI)


async def docs(request: Request) -> Response:
    return HTMLResponse(DOCS_PAGE)


ROUTES = [
    Route("/", dashboard),
    Route("/openapi.json", openapi),
    Route("/docs", docs),
    Mount("/docs/static", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-static"),
    Mount("/static", StaticFiles(directory=STATIC), name="static"),
]
