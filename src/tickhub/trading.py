"""Trading routes: market orders and the account of the calling API key."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .accounts import Fill, OrderRejected
from .errors import ApiError
from .http import read_model
from .models import OrderRequest
from .responses import JSONResponse
from .routes_common import INT64_MAX, bearer_account, hub_of, parse_int, parse_limit
from .wire import Tick


async def authenticate(request: Request) -> int:
    """The account of the request's ``Authorization: Bearer`` key; 401 without a valid one."""
    account_id = await bearer_account(request)
    assert account_id is not None
    return account_id


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 0 < len(key) <= 128 or not key.isascii() or not key.isprintable():
        raise ApiError(400, "bad_header", "Idempotency-Key must be 1-128 printable ASCII characters")
    return key


def fill_price(side: str, last: Tick, quoted: Tick | None, max_age: float) -> Fill:
    """Where a market order fills: a buy at the best ask, a sell at the best bid, when a quote no older than
    ``max_age`` seconds (by its source time) has that side; else at the last trade price."""
    if quoted is not None and time.time() - quoted.time.timestamp() <= max_age and quoted.fields is not None:
        _, _, _, bid, _, ask, _ = quoted.fields.values()
        if side == "buy" and ask is not None:
            return Fill(ask, "ask", last.price)
        if side == "sell" and bid is not None:
            return Fill(bid, "bid", last.price)
    return Fill(last.price, "last", last.price)


async def place_order(request: Request) -> Response:
    account_id = await authenticate(request)
    hub = hub_of(request)
    key = idempotency_key(request)
    body = await read_model(request, OrderRequest, hub.settings.max_body)
    tick = hub.market.latest.get(body.symbol)
    if tick is None:
        raise ApiError(422, "no_price", f"no price for {body.symbol} yet")
    fill = fill_price(body.side, tick, hub.market.quoted.get(body.symbol), hub.settings.quote_max_age)
    try:
        order, replayed = await hub.accounts.place(account_id, body.symbol, body.side, body.qty, tick, key, fill)
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
    before_id = parse_int("before", before, 1) if before is not None else None
    orders = await hub.accounts.orders(account_id, limit, before_id)
    return JSONResponse({"orders": [o.as_dict() for o in orders]})


async def get_order(request: Request) -> Response:
    """One order of the key's own account; another account's is 404 as well, so ids cannot be probed."""
    account_id = await authenticate(request)
    order_id = parse_int("order id", request.path_params["order_id"], 1, INT64_MAX)
    order = await hub_of(request).accounts.order(account_id, order_id)
    if order is None:
        raise ApiError(404, "unknown_order", f"no order {order_id}")
    return JSONResponse({"order": order.as_dict()})


async def my_account(request: Request) -> Response:
    account_id = await authenticate(request)
    hub = hub_of(request)
    return JSONResponse(await hub.accounts.summary(account_id, hub.market.latest))


async def orders(request: Request) -> Response:
    """One route for both methods, so a 405 lists both in its Allow header."""
    return await (place_order(request) if request.method == "POST" else list_orders(request))


ROUTES = [
    Route("/orders", orders, methods=["GET", "POST"]),
    Route("/orders/{order_id}", get_order),
    Route("/accounts/me", my_account),
]
