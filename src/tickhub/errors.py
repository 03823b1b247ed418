"""API errors: every failure a client sees is ``{"error": {"code", "message"}}`` with a fitting status."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from .responses import JSONResponse
from .store import StoreUnavailable

log = logging.getLogger("tickhub.errors")


class ApiError(Exception):
    """Raised by a route to answer with a JSON error."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "too_large"}


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if exc.status_code != 404 else f"no route for {request.method} {request.url.path}"
    return error_response(exc.status_code, code, str(message), exc.headers)


async def store_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("%s %s: database unavailable: %s", request.method, request.url.path, exc)
    return error_response(
        503, "database_unavailable", "the database is unreachable; retry shortly", {"Retry-After": "1"}
    )


async def client_gone(request: Request, exc: Exception) -> Response:
    """The client left before its request was read: not a failure. The answer goes nowhere (uvicorn drops
    what is sent to a closed connection) and the app returns normally, so nothing is logged as an error."""
    log.debug("%s %s: the client disconnected before its request was read", request.method, request.url.path)
    return Response(status_code=499)  # nginx's "client closed request"; nobody reads it


async def internal_error(request: Request, exc: Exception) -> Response:
    log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal", "internal error")


EXCEPTION_HANDLERS = {
    ApiError: api_error,
    HTTPException: http_error,
    StoreUnavailable: store_unavailable,
    ClientDisconnect: client_gone,
    Exception: internal_error,
}


async def response_for(request: Request, exc: Exception) -> Response:
    """The response the app's exception handlers give ``exc`` (for code outside Starlette's routing)."""
    for cls in type(exc).__mro__:
        handler = EXCEPTION_HANDLERS.get(cls)
        if handler is not None:
            return await handler(request, exc)
    raise exc
