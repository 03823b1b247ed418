"""Helpers every route module uses: the hub of a request, and query parameter parsing."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from starlette.requests import Request

from .errors import ApiError

if TYPE_CHECKING:
    from .hub import Hub


def hub_of(request: Request) -> Hub:
    return request.app.state.hub


async def bearer_account(request: Request, required: bool = True) -> int | None:
    """The account of the request's ``Authorization: Bearer`` key. No header: None, or a 401 when
    ``required``. A header that is not a valid key is always a 401 (never taken for anonymous)."""
    header = request.headers.get("authorization")
    account_id = None
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            account_id = await hub_of(request).accounts.authenticate(token.strip())
    if account_id is None and (required or header is not None):
        raise ApiError(
            401,
            "unauthorized",
            "a valid API key is required: Authorization: Bearer <key>"
            if required
            else "the API key is not valid: send a valid Authorization: Bearer <key>, or none",
            {"WWW-Authenticate": "Bearer"},
        )
    return account_id


UNIX_SECONDS = re.compile(r"[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?")
LARGEST = 1 << 62  # the largest count or offset a parameter takes: inside int64, and int() of it is cheap
INT64_MAX = (1 << 63) - 1  # the largest id (PostgreSQL bigint)
EARLIEST = datetime(1, 1, 1, tzinfo=UTC)


def parse_time(name: str, raw: str | None) -> datetime | None:
    """ISO-8601 (offset optional, UTC assumed) or Unix seconds; 400 naming the parameter otherwise.

    Any time returned is an aware UTC datetime, so within years 1-9999, which PostgreSQL also accepts.
    """
    if raw is None:
        return None
    try:
        if not raw.isascii() or len(raw) > 64:
            raise ValueError(raw)
        if UNIX_SECONDS.fullmatch(raw):
            return datetime.fromtimestamp(float(raw), UTC)
        value = datetime.fromisoformat(raw)
        # astimezone overflows past year 1 or 9999 (0001-01-01T00:00+01:00 is still year 0 in UTC)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        raise ApiError(400, "bad_parameter", f"{name} must be ISO-8601 or Unix seconds, got {raw[:40]!r}") from None


def parse_int(name: str, raw: str, minimum: int, maximum: int = LARGEST) -> int:
    """An integer written in ASCII digits, from ``minimum`` to ``maximum``; 400 naming it otherwise.

    The length is checked before ``int()``, which raises on more than 4300 digits.
    """
    if raw.isascii() and raw.isdigit() and len(raw) <= 20 and minimum <= int(raw) <= maximum:
        return int(raw)
    raise ApiError(400, "bad_parameter", f"{name} must be an integer from {minimum} to {maximum}, got {raw[:40]!r}")


def parse_limit(raw: str | None, default: int, cap: int) -> int:
    """A positive ``limit`` parameter, capped at ``cap`` (a larger one is not refused)."""
    return min(default if raw is None else parse_int("limit", raw, 1), cap)
