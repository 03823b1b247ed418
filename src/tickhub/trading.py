"""Trading routes: market orders and the account of the calling API key."""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .accounts import OrderRejected
from .errors import ApiError
from .http import read_json
from .responses import JSONResponse
from .routes_common import hub_of, parse_limit
from .wire import SYMBOL_RE

MAX_QTY = Decimal(10) ** 12
MAX_QTY_PLACES = 18


async def authenticate(request: Request) -> int:
    """The account of the request's ``Authorization: Bearer`` key; 401 without a valid one."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    account_id = None
    if scheme.lower() == "bearer" and token.strip():
        account_id = await hub_of(request).accounts.authenticate(token.strip())
    if account_id is None:
        raise ApiError(
            401,
            "unauthorized",
            "a valid API key is required: Authorization: Bearer <key>",
            {"WWW-Authenticate": "Bearer"},
        )
    return account_id


def parse_qty(value: Any) -> Decimal:
    """A positive exact quantity from a JSON number or decimal string."""
    if type(value) is float and not math.isfinite(value):
        value = None
    if type(value) in (int, float):
        value = str(value)  # a float's repr is its shortest exact decimal: 0.1 stays 0.1
    try:
        qty = Decimal(value) if isinstance(value, str) and len(value) <= 40 else None
    except InvalidOperation:
        qty = None
    if qty is None or not qty.is_finite() or qty <= 0 or qty > MAX_QTY or qty.as_tuple().exponent < -MAX_QTY_PLACES:
        raise ApiError(400, "bad_field", f"qty must be a positive number up to {MAX_QTY_PLACES} decimal places")
    return qty


def parse_order(body: dict[str, Any]) -> tuple[str, str, Decimal]:
    unknown = sorted(set(body) - {"symbol", "side", "qty"})
    if unknown:
        raise ApiError(400, "bad_field", f"unknown field {unknown[0][:40]!r}")
    missing = [name for name in ("symbol", "side", "qty") if name not in body]
    if missing:
        raise ApiError(400, "missing_field", f"{missing[0]} is required")
    symbol, side = body["symbol"], body["side"]
    if not isinstance(symbol, str) or not SYMBOL_RE.match(symbol.upper()):
        raise ApiError(400, "bad_field", "symbol must be a symbol such as BTCUSD")
    if side not in ("buy", "sell"):
        raise ApiError(400, "bad_field", 'side must be "buy" or "sell"')
    return symbol.upper(), side, parse_qty(body["qty"])


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 0 < len(key) <= 128 or not key.isascii() or not key.isprintable():
        raise ApiError(400, "bad_header", "Idempotency-Key must be 1-128 printable ASCII characters")
    return key


async def place_order(request: Request) -> Response:
    account_id = await authenticate(request)
    hub = hub_of(request)
    key = idempotency_key(request)
    symbol, side, qty = parse_order(await read_json(request, hub.settings.max_body))
    tick = hub.market.latest.get(symbol)
    if tick is None:
        raise ApiError(422, "no_price", f"no price for {symbol} yet")
    try:
        order, replayed = await hub.accounts.place(account_id, symbol, side, qty, tick, key)
    except OrderRejected as exc:
        raise ApiError(422, exc.code, exc.message) from None
    headers = {"Location": f"/orders/{order.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse({"order": order.as_dict()}, status_code=200 if replayed else 201, headers=headers)


async def list_orders(request: Request) -> Response:
    account_id = await authenticate(request)
    hub = hub_of(request)
    limit = parse_limit(request.query_params.get("limit"), 100, hub.settings.history_limit)
    before = request.query_params.get("before")
    if before is not None and not (before.isascii() and before.isdigit() and 0 < len(before) < 19 and int(before) > 0):
        raise ApiError(400, "bad_parameter", "before must be an order id")
    orders = await hub.accounts.orders(account_id, limit, int(before) if before else None)
    return JSONResponse({"orders": [o.as_dict() for o in orders]})


async def my_account(request: Request) -> Response:
    account_id = await authenticate(request)
    hub = hub_of(request)
    return JSONResponse(await hub.accounts.summary(account_id, hub.market.latest))


async def orders(request: Request) -> Response:
    """One route for both methods, so a 405 lists both in its Allow header."""
    return await (place_order(request) if request.method == "POST" else list_orders(request))


ROUTES = [
    Route("/orders", orders, methods=["GET", "POST"]),
    Route("/accounts/me", my_account),
]
