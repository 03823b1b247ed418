"""Request helpers shared by the routes: bounded JSON bodies and work that stops when the client leaves."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Coroutine
from decimal import Decimal
from typing import Any, TypeVar

import orjson
from starlette.requests import Request

from .errors import ApiError

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before the work finished; the work was cancelled."""


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body; 413 past ``max_bytes``, whether declared or streamed."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and (len(declared) > 18 or int(declared) > max_bytes):
        raise ApiError(413, "too_large", f"request body above {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise ApiError(413, "too_large", f"request body above {max_bytes} bytes")
    return bytes(body)


def _json_object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ApiError(400, "bad_json", "the body must be a JSON object")
    return value


async def read_json(request: Request, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object; 413 past ``max_bytes``, 400 if it is not a JSON object."""
    try:
        value = orjson.loads(await read_body(request, max_bytes))
    except orjson.JSONDecodeError:
        raise ApiError(400, "bad_json", "the body is not valid JSON") from None
    return _json_object(value)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads_exact(body: bytes) -> Any:
    """JSON with every number as the Decimal of its text, so ``0.123456789012345678`` stays itself.

    orjson reads numbers as floats (and refuses ``1e400``), so this uses the standard library, which
    would otherwise accept ``NaN`` and ``Infinity``: refused here, as any JSON parser does.
    """
    return json.loads(body.decode(), parse_float=Decimal, parse_int=Decimal, parse_constant=_no_constants)


async def read_exact_json(request: Request, max_bytes: int) -> dict[str, Any]:
    """As ``read_json``, with exact Decimal numbers (for small bodies that carry amounts)."""
    body = await read_body(request, max_bytes)
    try:
        value = loads_exact(body)
    except (ValueError, RecursionError, ArithmeticError):  # bad JSON or UTF-8; nesting; an exponent out of range
        raise ApiError(400, "bad_json", "the body is not valid JSON") from None
    return _json_object(value)


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work``; if the client disconnects first, cancel it and raise ClientGone.

    Starlette does not cancel a handler whose client went away, so a waiter for a lock would
    otherwise keep its place in the queue for nobody.
    """
    work_task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((work_task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not work_task.done():
            work_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if work_task.cancelled() or not work_task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await work_task
        raise ClientGone
    return work_task.result()
