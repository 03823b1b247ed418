"""Request helpers shared by the routes: bounded bodies read as their models, and work that stops when the
client leaves."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections.abc import Coroutine
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request

from .errors import ApiError
from .models import RequestBody, decode_hook, exact_number

T = TypeVar("T")
M = TypeVar("M", bound=RequestBody)
# msgspec's wording of the two errors that concern the body as a whole, with the field's name in backquotes
MISSING = "Object missing required field `"
UNKNOWN = "Object contains unknown field `"


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


_ANY = msgspec.json.Decoder(float_hook=exact_number)  # numbers as the Decimal of their text: 1e400 is JSON


@functools.cache
def _decoder(model: type[M]) -> msgspec.json.Decoder[M]:
    return msgspec.json.Decoder(model, dec_hook=decode_hook, float_hook=exact_number)


def model_error(model: type[RequestBody], exc: msgspec.ValidationError) -> ApiError:
    """The API's error for a body that is JSON but not a valid ``model``: the field and its rule."""
    message = str(exc)
    # the models are flat: a missing or unknown field is an error of the body itself, with no path
    if message.startswith(UNKNOWN):
        return ApiError(400, "bad_field", f"unknown field {message[len(UNKNOWN) : -1][:40]!r}")
    if message.startswith(MISSING):
        return ApiError(400, "missing_field", f"{message[len(MISSING) : -1]} is required")
    message, _, path = message.rpartition(" - at `$.")
    if message:  # path is "qty`" or "qty[0]`": the top-level field is the one written wrong
        field = re.split(r"[.\[`]", path, maxsplit=1)[0]
        return ApiError(400, "bad_field", model.rules.get(field) or f"{field}: {message}")
    return ApiError(400, "bad_json", "the body must be a JSON object")


def _is_json(body: bytes) -> bool:
    try:
        _ANY.decode(body)
    except msgspec.ValidationError:  # an integer past 64 bits: JSON, though no field takes it
        return True
    except (msgspec.DecodeError, RecursionError):
        return False
    return True


def decode_model(model: type[M], body: bytes) -> M:
    """``body`` decoded and validated as ``model`` (numbers of custom-typed fields exact); ApiError if not."""
    try:
        return _decoder(model).decode(body)
    except msgspec.ValidationError as exc:
        # msgspec stops at the first wrong field, so what follows it may not be JSON at all ({"qty": 0x10})
        if not _is_json(body):
            raise ApiError(400, "bad_json", "the body is not valid JSON") from None
        raise model_error(model, exc) from None
    except (msgspec.DecodeError, RecursionError):  # not JSON, not UTF-8; nesting past the decoder's depth
        raise ApiError(400, "bad_json", "the body is not valid JSON") from None


async def read_model(request: Request, model: type[M], max_bytes: int) -> M:
    """The request body as ``model``: 413 past ``max_bytes``, 400 naming the field if it is not one."""
    return decode_model(model, await read_body(request, max_bytes))


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
