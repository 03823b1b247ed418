"""JSON responses encoded with orjson (Decimal-free: prices are already strings)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse as _StarletteJSONResponse
from starlette.responses import Response


class JSONResponse(_StarletteJSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def raw_json(body: bytes, status_code: int = 200) -> Response:
    """A JSON response whose body is already encoded (tick JSON is encoded once, at ingest)."""
    return Response(body, status_code=status_code, media_type="application/json")
