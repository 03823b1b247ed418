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


UNIX_SECONDS = re.compile(r"^[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?$")


def parse_time(name: str, raw: str | None) -> datetime | None:
    """ISO-8601 (offset optional, UTC assumed) or Unix seconds; 400 naming the parameter otherwise."""
    if raw is None:
        return None
    try:
        if UNIX_SECONDS.match(raw):
            return datetime.fromtimestamp(float(raw), UTC)
        value = datetime.fromisoformat(raw)
    except (ValueError, OverflowError, OSError):
        raise ApiError(400, "bad_parameter", f"{name} must be ISO-8601 or Unix seconds, got {raw[:40]!r}") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_limit(raw: str | None, default: int, cap: int) -> int:
    if raw is None:
        return min(default, cap)
    if not (raw.isascii() and raw.isdigit()) or int(raw) <= 0:
        raise ApiError(400, "bad_parameter", f"limit must be a positive integer, got {raw[:40]!r}")
    return min(int(raw), cap)
