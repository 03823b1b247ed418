"""REST routes: prices, symbols, history, liveness and health."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import pages, trading, work
from .errors import ApiError
from .metrics import CONTENT_TYPE
from .responses import JSONResponse, raw_json
from .routes_common import EARLIEST, INT64_MAX, hub_of, parse_int, parse_limit, parse_time
from .stream import stream_endpoint
from .wire import SYMBOL_RE, format_ts

DEFAULT_HISTORY_LIMIT = 1000


def _symbol(request: Request) -> str:
    """The path's symbol, upper-cased; 404 if the hub has never seen it."""
    raw = request.path_params["symbol"]
    symbol = raw.upper() if raw.isascii() else raw  # str.upper() maps a long s to "S": ASCII first
    if not SYMBOL_RE.match(symbol) or symbol not in hub_of(request).market.latest:
        raise ApiError(404, "unknown_symbol", f"no prices for symbol {symbol[:40]!r}")
    return symbol


async def ping(request: Request) -> Response:
    return JSONResponse({"pong": True})


async def health(request: Request) -> Response:
    report = hub_of(request).health()
    return JSONResponse(report, status_code=503 if report["status"] == "draining" else 200)


async def metrics(request: Request) -> Response:
    return Response(hub_of(request).metrics.render(), media_type=CONTENT_TYPE)


async def symbols(request: Request) -> Response:
    market = hub_of(request).market
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
    ticks = hub_of(request).market.ticks()
    return raw_json(b'{"prices":[' + b",".join(t.json for t in ticks) + b"]}")


async def price(request: Request) -> Response:
    return raw_json(hub_of(request).market.latest[_symbol(request)].json)


async def instruments(request: Request) -> Response:
    hub = hub_of(request)
    settings = hub.settings
    return JSONResponse(
        {
            "window_s": settings.composite_window,
            "max_deviation_pct": str(settings.composite_max_deviation),
            "instruments": hub.composite.report(),
        }
    )


async def history(request: Request) -> Response:
    hub = hub_of(request)
    symbol = _symbol(request)
    query = request.query_params
    since = parse_time("since", query.get("since"))
    until = parse_time("until", query.get("until"))
    if since is not None and until is not None and since >= until:
        raise ApiError(400, "bad_parameter", "since must be before until")
    limit = parse_limit(query.get("limit"), DEFAULT_HISTORY_LIMIT, hub.settings.history_limit)
    raw_after = query.get("after_id")
    if raw_after is None:
        ticks = await hub.store.history(symbol, since, until, limit)
    else:  # a page after the last tick of the previous one: ticks that share a time are not skipped
        if since is not None:
            raise ApiError(400, "bad_parameter", "give since or after_id, not both")
        after_id = parse_int("after_id", raw_after, 1, INT64_MAX)
        found = await hub.store.history_after(symbol, after_id, until, limit)
        if found is None:
            raise ApiError(400, "bad_parameter", f"after_id {after_id} is not a stored tick of {symbol}")
        ticks = found
    body = b'{"symbol":"%b","ticks":[%b]}' % (symbol.encode(), b",".join(t.json for t in ticks))
    return raw_json(body)


CANDLE_INTERVALS = {
    "1s": timedelta(seconds=1),
    "1m": timedelta(minutes=1),
    "5m": timedelta(minutes=5),
    "1h": timedelta(hours=1),
    "1d": timedelta(days=1),
}
DEFAULT_CANDLES = 300


async def candles(request: Request) -> Response:
    hub = hub_of(request)
    symbol = _symbol(request)
    query = request.query_params
    name = query.get("interval", "1m")
    interval = CANDLE_INTERVALS.get(name)
    if interval is None:
        raise ApiError(400, "bad_parameter", f"interval must be one of {', '.join(CANDLE_INTERVALS)}")
    limit = parse_limit(query.get("limit"), DEFAULT_CANDLES, hub.settings.history_limit)
    since = parse_time("since", query.get("since"))
    until = parse_time("until", query.get("until"))
    if since is not None and until is not None and since >= until:
        raise ApiError(400, "bad_parameter", "since must be before until")
    until = until or datetime.now(UTC)  # a since after now finds nothing, as with history
    if since is None:  # the newest `limit` buckets, the current one included, none before year 1
        fits = (until - EARLIEST) // interval >= limit  # else interval * limit would overflow past year 1
        since = until - interval * limit if fits else EARLIEST
    rows = await hub.store.candles(symbol, interval, since, until, limit)
    return JSONResponse(
        {
            "symbol": symbol,
            "interval": name,
            "candles": [
                {
                    "start": format_ts(start),
                    "open": o,
                    "high": h,
                    "low": low,
                    "close": c,
                    "count": n,
                    "volume": volume,
                    "trades": trades,
                    "vwap": vwap,
                }
                for start, o, h, low, c, n, volume, trades, vwap in rows
            ],
        }
    )


ROUTES = [
    Route("/ping", ping),
    Route("/health", health),
    Route("/metrics", metrics),
    Route("/stream", stream_endpoint),
    Route("/symbols", symbols),
    Route("/prices", prices),
    Route("/prices/{symbol}", price),
    Route("/prices/{symbol}/history", history),
    Route("/prices/{symbol}/candles", candles),
    Route("/instruments", instruments),
    *work.ROUTES,
    *trading.ROUTES,
    *pages.ROUTES,
]
