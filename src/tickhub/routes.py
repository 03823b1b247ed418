"""REST routes: prices, symbols, history, liveness and health."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .errors import ApiError
from .responses import JSONResponse, raw_json
from .stream import stream_endpoint
from .wire import SYMBOL_RE

if TYPE_CHECKING:
    from .hub import Hub

DEFAULT_HISTORY_LIMIT = 1000


def _hub(request: Request) -> Hub:
    return request.app.state.hub


def _symbol(request: Request) -> str:
    """The path's symbol, upper-cased; 404 if the hub has never seen it."""
    symbol = request.path_params["symbol"].upper()
    if not SYMBOL_RE.match(symbol) or symbol not in _hub(request).market.latest:
        raise ApiError(404, "unknown_symbol", f"no prices for symbol {symbol[:40]!r}")
    return symbol


def parse_time(name: str, raw: str | None) -> datetime | None:
    """ISO-8601 (offset optional, UTC assumed) or Unix seconds; 400 naming the parameter otherwise."""
    if raw is None or raw == "":
        return None
    try:
        if raw.replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(raw), UTC)
        value = datetime.fromisoformat(raw)
    except (ValueError, OverflowError, OSError):
        raise ApiError(400, "bad_parameter", f"{name} must be ISO-8601 or Unix seconds, got {raw[:40]!r}") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_limit(raw: str | None, default: int, cap: int) -> int:
    if raw is None or raw == "":
        return min(default, cap)
    if not raw.isdigit() or int(raw) <= 0:
        raise ApiError(400, "bad_parameter", f"limit must be a positive integer, got {raw[:40]!r}")
    return min(int(raw), cap)


async def ping(request: Request) -> Response:
    return JSONResponse({"pong": True})


async def health(request: Request) -> Response:
    report = _hub(request).health()
    return JSONResponse(report, status_code=503 if report["status"] == "draining" else 200)


async def symbols(request: Request) -> Response:
    market = _hub(request).market
    return JSONResponse(
        {
            "symbols": [
                {
                    "symbol": symbol,
                    "sources": sorted(market.by_source[symbol]),
                    "price": tick.price,
                    "last_update": tick.ts,
                    "last_id": str(tick.id),
                }
                for symbol, tick in sorted(market.latest.items())
            ]
        }
    )


async def prices(request: Request) -> Response:
    ticks = _hub(request).market.ticks()
    return raw_json(b'{"prices":[' + b",".join(t.json for t in ticks) + b"]}")


async def price(request: Request) -> Response:
    return raw_json(_hub(request).market.latest[_symbol(request)].json)


async def history(request: Request) -> Response:
    hub = _hub(request)
    symbol = _symbol(request)
    query = request.query_params
    since = parse_time("since", query.get("since"))
    until = parse_time("until", query.get("until"))
    if since is not None and until is not None and since >= until:
        raise ApiError(400, "bad_parameter", "since must be before until")
    limit = parse_limit(query.get("limit"), DEFAULT_HISTORY_LIMIT, hub.settings.history_limit)
    ticks = await hub.store.history(symbol, since, until, limit)
    body = b'{"symbol":"%b","ticks":[%b]}' % (symbol.encode(), b",".join(t.json for t in ticks))
    return raw_json(body)


ROUTES = [
    Route("/ping", ping),
    Route("/health", health),
    Route("/stream", stream_endpoint),
    Route("/symbols", symbols),
    Route("/prices", prices),
    Route("/prices/{symbol}", price),
    Route("/prices/{symbol}/history", history),
]
