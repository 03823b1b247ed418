"""The OpenAPI 3.1 description of every route, served at /openapi.json and rendered at /docs.

Written out rather than generated from docstrings, so that each route states its request and
response schemas and the errors it can answer; a test checks it names every route of the app.
"""

from __future__ import annotations

from typing import Any

from . import __version__

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    out = {str(s): {"$ref": f"#/components/responses/E{s}"} for s in statuses}
    out["default"] = {"$ref": "#/components/responses/E500"}
    return out


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


SYMBOL_PATH = {
    "name": "symbol",
    "in": "path",
    "required": True,
    "description": "A symbol such as BTCUSD.",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:-]{0,39}$"},
}
DECIMAL = {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$", "description": "An exact decimal number."}
TIME = {"type": "string", "format": "date-time"}
TIME_PARAM = {
    "anyOf": [{"type": "string", "format": "date-time"}, {"type": "number", "minimum": 0, "maximum": 2e11}],
    "description": "ISO-8601 (UTC if no offset) or Unix seconds.",
}
SYMBOL = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:-]{0,39}$"}
POSITIVE_DECIMAL = {
    "type": "string",
    "pattern": r"^(?!0*(\.0*)?$)[0-9]{1,13}(\.[0-9]{1,18})?$",
    "description": "A positive decimal number, up to 18 decimal places.",
}
INT64 = {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}
ID = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    "Tick": {
        "type": "object",
        "required": ["id", "source", "symbol", "price", "ts", "seq"],
        "properties": {
            "id": {"type": "string", "description": "The hub id: opaque, strictly increasing."},
            "source": {"type": "string"},
            "symbol": {"type": "string"},
            "price": DECIMAL,
            "ts": {**TIME, "description": "Source time, UTC."},
            "seq": {"type": "integer", "description": "The source's own event number."},
            "trade_id": {
                "type": "string",
                "pattern": "^[0-9A-Za-z_-]{1,64}$",
                "description": "The exchange's own id of the trade, when the tick is one (Binance, Coinbase).",
            },
            "venues": {
                "type": "array",
                "description": "Composite ticks only (source `composite`): the venues whose prices made it.",
                "items": _ref("VenueQuote"),
            },
        },
    },
    "VenueQuote": {
        "type": "object",
        "required": ["source", "symbol", "price", "ts"],
        "properties": {"source": {"type": "string"}, "symbol": {"type": "string"}, "price": DECIMAL, "ts": TIME},
    },
    "Instruments": {
        "type": "object",
        "required": ["window_s", "max_deviation_pct", "instruments"],
        "properties": {
            "window_s": {"type": "number", "description": "How long a venue's price stays fresh, in seconds."},
            "max_deviation_pct": {**DECIMAL, "description": "Deviation from the median that excludes a venue."},
            "instruments": {"type": "array", "items": _ref("Instrument")},
        },
    },
    "Instrument": {
        "type": "object",
        "required": ["name", "quote", "accept", "status", "price", "published", "map", "venues"],
        "properties": {
            "name": {"type": "string", "description": "The composite's symbol on the stream."},
            "quote": {"type": "string"},
            "accept": {"type": "array", "items": {"type": "string"}, "description": "Quotes counted as `quote`."},
            "status": {"type": "string", "enum": ["ok", "no_data", "all_stale", "all_outliers"]},
            "price": {"oneOf": [DECIMAL, {"type": "null"}], "description": "The composite computed now."},
            "published": {"type": "integer"},
            "last_price": {"oneOf": [DECIMAL, {"type": "null"}], "description": "The last one published."},
            "map": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "symbol": {"type": "string"},
                        "source": {"type": ["string", "null"], "description": "null: any source."},
                        "quote": {"type": "string"},
                    },
                },
            },
            "venues": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "source": {"type": "string"},
                        "symbol": {"type": "string"},
                        "quote": {"type": "string"},
                        "price": DECIMAL,
                        "ts": TIME,
                        "age_s": {"type": "number"},
                        "state": {"type": "string", "enum": ["fresh", "excluded", "stale"]},
                        "fresh": {"type": "boolean"},
                        "excluded": {"type": "boolean", "description": "Fresh but an outlier right now."},
                        "exclusions": {"type": "integer", "description": "Composites it was left out of."},
                    },
                },
            },
        },
    },
    "Prices": {
        "type": "object",
        "required": ["prices"],
        "properties": {"prices": {"type": "array", "items": _ref("Tick")}},
    },
    "History": {
        "type": "object",
        "required": ["symbol", "ticks"],
        "properties": {"symbol": {"type": "string"}, "ticks": {"type": "array", "items": _ref("Tick")}},
    },
    "Symbols": {
        "type": "object",
        "required": ["symbols"],
        "properties": {
            "symbols": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["symbol", "sources", "price", "last_update", "last_id"],
                    "properties": {
                        "symbol": {"type": "string"},
                        "sources": {"type": "array", "items": {"type": "string"}},
                        "price": DECIMAL,
                        "last_update": TIME,
                        "last_id": {"type": "string"},
                    },
                },
            }
        },
    },
    "Candles": {
        "type": "object",
        "required": ["symbol", "interval", "candles"],
        "properties": {
            "symbol": {"type": "string"},
            "interval": {"type": "string", "enum": ["1s", "1m", "5m", "1h"]},
            "candles": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["start", "open", "high", "low", "close", "count"],
                    "properties": {
                        "start": TIME,
                        "open": DECIMAL,
                        "high": DECIMAL,
                        "low": DECIMAL,
                        "close": DECIMAL,
                        "count": {"type": "integer"},
                    },
                },
            },
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "role", "sources", "broker", "writer", "stream"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "degraded", "draining"]},
            "role": {
                "type": "string",
                "enum": ["ingesting", "standby"],
                "description": "Whether this replica holds the ingest lease (always, with one replica).",
            },
            "hub_id": {"type": "string"},
            "sources": {
                "type": "object",
                "description": "The sources this replica ingests (none on a standby).",
                "additionalProperties": {"type": "object"},
            },
            "broker": {
                "type": "object",
                "description": "The shared log: memory:// or the Redis stream, its state, ticks taken over, gaps.",
            },
            "writer": {"type": "object"},
            "stream": {"type": "object"},
            "composite": {
                "type": "object",
                "description": "Per instrument: ok or no_composite with the reason; venues fresh, excluded, stale.",
                "additionalProperties": {"type": "object"},
            },
        },
    },
    "OrderRequest": {
        "type": "object",
        "required": ["symbol", "side", "qty"],
        "additionalProperties": False,
        "properties": {
            "symbol": SYMBOL,
            "side": {"type": "string", "enum": ["buy", "sell"]},
            "qty": {
                "oneOf": [
                    {"type": "number", "exclusiveMinimum": 0, "maximum": 1e12, "multipleOf": 1e-18},
                    POSITIVE_DECIMAL,
                ]
            },
        },
    },
    "Order": {
        "type": "object",
        "required": [
            "id",
            "symbol",
            "side",
            "qty",
            "price",
            "amount",
            "realized",
            "cash_after",
            "tick_id",
            "tick_ts",
            "filled_at",
        ],
        "properties": {
            "id": {"type": "integer"},
            "symbol": {"type": "string"},
            "side": {"type": "string", "enum": ["buy", "sell"]},
            "qty": DECIMAL,
            "price": DECIMAL,
            "amount": DECIMAL,
            "realized": DECIMAL,
            "cash_after": DECIMAL,
            "tick_id": {"type": "string"},
            "tick_ts": TIME,
            "filled_at": TIME,
        },
    },
    "OrderResult": {"type": "object", "required": ["order"], "properties": {"order": _ref("Order")}},
    "Orders": {
        "type": "object",
        "required": ["orders"],
        "properties": {"orders": {"type": "array", "items": _ref("Order")}},
    },
    "Account": {
        "type": "object",
        "required": ["account", "cash", "positions", "realized_pnl", "unrealized_pnl", "equity"],
        "properties": {
            "account": {
                "type": "object",
                "properties": {"id": {"type": "integer"}, "name": {"type": "string"}, "created_at": TIME},
            },
            "cash": DECIMAL,
            "realized_pnl": DECIMAL,
            "unrealized_pnl": DECIMAL,
            "equity": DECIMAL,
            "positions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "symbol": {"type": "string"},
                        "qty": DECIMAL,
                        "avg_cost": {"oneOf": [DECIMAL, {"type": "null"}]},
                        "cost_basis": DECIMAL,
                        "price": {"oneOf": [DECIMAL, {"type": "null"}]},
                        "market_value": {"oneOf": [DECIMAL, {"type": "null"}]},
                        "unrealized_pnl": {"oneOf": [DECIMAL, {"type": "null"}]},
                        "realized_pnl": DECIMAL,
                    },
                },
            },
        },
    },
    "TestResult": {
        "type": "object",
        "required": ["elapsed"],
        "properties": {"elapsed": {"type": "number", "description": "Seconds since the call arrived."}},
    },
    "TaskRequest": {
        "type": "object",
        "required": ["num", "timeout"],
        "additionalProperties": False,
        "properties": {
            "num": INT64,
            "timeout": {
                "type": "number",
                "minimum": 0,
                "maximum": 3600,
                "description": "Seconds, at most TICKHUB_TASK_TIMEOUT_MAX.",
            },
        },
    },
    "Task": {
        "type": "object",
        "required": ["id", "num", "timeout", "state", "added_at", "attempts"],
        "properties": {
            "id": {"type": "integer"},
            "num": {"type": "integer"},
            "timeout": {"type": "number"},
            "state": {"type": "string", "enum": ["pending", "running", "done"]},
            "position": {"type": "integer", "description": "1 = running or next; open tasks only."},
            "added_at": TIME,
            "started_at": {"oneOf": [TIME, {"type": "null"}]},
            "finished_at": {"oneOf": [TIME, {"type": "null"}]},
            "attempts": {"type": "integer"},
        },
    },
    "TaskQueue": {
        "type": "object",
        "required": ["tasks"],
        "properties": {"tasks": {"type": "array", "items": _ref("Task")}},
    },
    "TaskResults": {
        "type": "object",
        "required": ["results"],
        "properties": {
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "num", "started_at", "finished_at"],
                    "properties": {
                        "id": {"type": "integer"},
                        "num": {"type": "integer"},
                        "timeout": {"type": "number"},
                        "started_at": TIME,
                        "finished_at": TIME,
                    },
                },
            }
        },
    },
}

STREAM_DESCRIPTION = """Server-Sent Events. On connect: `retry:`, then a `snapshot` event (latest tick of each
requested symbol; its `id:` is the newest id), then `tick` events (`id:` = tick id, data = Tick JSON).
Resume with the `Last-Event-ID` header or `?last_event_id=`: every tick after that id, no gap, none twice.
An id that cannot be resumed gets a `resync` event (`{"reason", "last_event_id"}`) and a fresh snapshot.
Comment heartbeats keep the connection alive."""


def _path(summary: str, ok: dict[str, Any], *errors: int, tag: str, **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "tags": [tag], "responses": {**ok, **_errors(*errors)}, **extra}


def build_openapi() -> dict[str, Any]:
    limit = _query(
        "limit", "How many; capped by TICKHUB_HISTORY_LIMIT.", {"type": "integer", "minimum": 1, "maximum": 2**62}
    )
    bearer = [{"bearer": []}]
    paths: dict[str, Any] = {
        "/stream": {
            "get": _path(
                "Subscribe to ticks (SSE)",
                {
                    "200": {
                        "description": STREAM_DESCRIPTION,
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    }
                },
                400,
                503,
                tag="stream",
                parameters=[
                    _query("symbols", "Comma-separated symbols; all if absent."),
                    _query("last_event_id", "Resume after this id (as the Last-Event-ID header)."),
                    {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}},
                ],
            )
        },
        "/symbols": {"get": _path("Known symbols", {"200": _json(_ref("Symbols"), "Symbols.")}, tag="market")},
        "/prices": {
            "get": _path("Latest tick of every symbol", {"200": _json(_ref("Prices"), "Prices.")}, tag="market")
        },
        "/prices/{symbol}": {
            "get": _path(
                "Latest tick of a symbol",
                {"200": _json(_ref("Tick"), "The tick.")},
                404,
                tag="market",
                parameters=[SYMBOL_PATH],
            )
        },
        "/prices/{symbol}/history": {
            "get": _path(
                "Persisted ticks, oldest first",
                {"200": _json(_ref("History"), "Ticks.")},
                400,
                404,
                503,
                tag="market",
                parameters=[
                    SYMBOL_PATH,
                    _query("since", "From this time (inclusive).", TIME_PARAM),
                    _query("until", "To this time (exclusive).", TIME_PARAM),
                    _query(
                        "after_id",
                        "The ticks after this one (the last of the previous page), in time then id order; "
                        "not with since.",
                        {"type": "string", "pattern": "^[0-9]{1,19}$"},
                    ),
                    limit,
                ],
            )
        },
        "/prices/{symbol}/candles": {
            "get": _path(
                "OHLC candles from persisted ticks",
                {"200": _json(_ref("Candles"), "Candles.")},
                400,
                404,
                503,
                tag="market",
                parameters=[
                    SYMBOL_PATH,
                    _query("interval", "Bucket size.", {"type": "string", "enum": ["1s", "1m", "5m", "1h"]}),
                    _query("since", "From this time.", TIME_PARAM),
                    _query("until", "To this time.", TIME_PARAM),
                    limit,
                ],
            )
        },
        "/instruments": {
            "get": _path(
                "Canonical instruments: the map, and each venue's freshness and exclusion",
                {"200": _json(_ref("Instruments"), "Instruments.")},
                tag="market",
            )
        },
        "/orders": {
            "post": _path(
                "Market order at the latest price",
                {
                    "201": _json(_ref("OrderResult"), "Filled."),
                    "200": _json(_ref("OrderResult"), "A repeat of an Idempotency-Key: the original order."),
                },
                400,
                401,
                413,
                422,
                503,
                tag="trading",
                security=bearer,
                parameters=[
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "maxLength": 128},
                    }
                ],
                requestBody={"required": True, "content": {JSON: {"schema": _ref("OrderRequest")}}},
            ),
            "get": _path(
                "The key's own orders, newest first",
                {"200": _json(_ref("Orders"), "Orders.")},
                400,
                401,
                503,
                tag="trading",
                security=bearer,
                parameters=[
                    limit,
                    _query(
                        "before",
                        "Orders with a lower id than this.",
                        {"type": "integer", "minimum": 1, "maximum": 2**62},
                    ),
                ],
            ),
        },
        "/orders/{order_id}": {
            "get": _path(
                "One of the key's own orders (another account's is 404)",
                {"200": _json(_ref("OrderResult"), "The order.")},
                400,
                401,
                404,
                503,
                tag="trading",
                security=bearer,
                parameters=[{"name": "order_id", "in": "path", "required": True, "schema": ID}],
            )
        },
        "/accounts/me": {
            "get": _path(
                "The key's account: cash, positions, P&L",
                {"200": _json(_ref("Account"), "The account.")},
                401,
                503,
                tag="trading",
                security=bearer,
            )
        },
        "/test": {
            "get": _path(
                "One call at a time under one lock", {"200": _json(_ref("TestResult"), "Done.")}, 503, tag="work"
            )
        },
        "/tasks": {
            "post": _path(
                "Queue a task",
                {"201": _json(_ref("Task"), "Queued.")},
                400,
                401,
                413,
                429,
                503,
                tag="work",
                description="One client (the account of an optional `Authorization: Bearer` key, else the address)"
                " may hold at most TICKHUB_TASKS_PER_CLIENT open tasks and TICKHUB_TASK_SECONDS_PER_CLIENT seconds"
                " of their timeouts: past either, 429 `too_many_tasks` with Retry-After. An invalid key is a 401.",
                requestBody={"required": True, "content": {JSON: {"schema": _ref("TaskRequest")}}},
            )
        },
        "/tasks/queue": {
            "get": _path("Pending and running tasks", {"200": _json(_ref("TaskQueue"), "Tasks.")}, 503, tag="work")
        },
        "/tasks/results": {
            "get": _path(
                "Finished tasks in completion order",
                {"200": _json(_ref("TaskResults"), "Results.")},
                400,
                503,
                tag="work",
                parameters=[
                    limit,
                    _query("offset", "Skip this many.", {"type": "integer", "minimum": 0, "maximum": 2**62}),
                ],
            )
        },
        "/tasks/{task_id}": {
            "get": _path(
                "One task",
                {"200": _json(_ref("Task"), "The task.")},
                400,
                404,
                503,
                tag="work",
                parameters=[{"name": "task_id", "in": "path", "required": True, "schema": ID}],
            )
        },
        "/ping": {"get": _path("Liveness", {"200": _json({"type": "object"}, "Alive.")}, tag="operations")},
        "/health": {
            "get": _path(
                "Readiness: sources, writer, subscribers",
                {"200": _json(_ref("Health"), "Ok or degraded."), "503": _json(_ref("Health"), "Draining.")},
                tag="operations",
            )
        },
        "/metrics": {
            "get": _path(
                "Prometheus metrics",
                {
                    "200": {
                        "description": "Prometheus text format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                tag="operations",
            )
        },
        "/openapi.json": {
            "get": _path("This document", {"200": _json({"type": "object"}, "OpenAPI.")}, tag="operations")
        },
        "/docs": {
            "get": _path(
                "API documentation (Swagger UI)",
                {"200": {"description": "HTML.", "content": {"text/html": {}}}},
                tag="operations",
            )
        },
        "/": {
            "get": _path(
                "Live dashboard", {"200": {"description": "HTML.", "content": {"text/html": {}}}}, tag="operations"
            )
        },
    }
    responses = {
        f"E{s}": _json(_ref("Error"), d)
        for s, d in {
            400: "Malformed request.",
            401: "Missing or invalid API key.",
            404: "Not found.",
            413: "Request body too large.",
            422: "Refused; nothing changed.",
            429: "Too many from this client; retry after Retry-After.",
            500: "Internal error.",
            503: "Unavailable; retry.",
        }.items()
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tickhub",
            "version": __version__,
            "description": "A market-data hub: one ordered tick stream over SSE, REST snapshots and history, "
            "accounts and market orders, and two serialized-work services.",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "responses": responses,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API key from `tickhub keys create`."}
            },
        },
    }
