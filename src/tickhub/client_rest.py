"""The hub's REST routes, written once for the aiohttp client and its synchronous twin.

Each method of :class:`HubApi` describes one request as a :class:`Call` (method, path, query, body,
Idempotency-Key and how to read the answer) and hands it to ``_send``, which the async client
implements as a coroutine and the sync one as a plain call: ``await hub.prices()`` and
``hub.prices()`` are the same code.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, TypeAlias, TypeVar
from urllib.parse import quote

import orjson

from .client_models import Account, Candle, HubError, Order, Tick, decimal_text
from .client_stream import error_from, worth_retrying
from .wire import format_ts

T = TypeVar("T")
#: What a :class:`HubApi` method returns: the value (sync client) or an awaitable of it (async client).
Reply: TypeAlias = T | Awaitable[T]
#: A time for ``since``/``until``: an aware datetime, ISO-8601 text or Unix seconds.
When: TypeAlias = datetime | str | int | float


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One REST request and how to read its answer (the decoded JSON and whether it was a replay)."""

    method: str
    path: str
    read: Callable[[Any, bool], T]
    params: Mapping[str, str] | None = None
    body: Mapping[str, Any] | None = None
    idempotency_key: str | None = None

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.body is not None:
            headers["Content-Type"] = "application/json"
        if self.idempotency_key is not None:
            headers["Idempotency-Key"] = self.idempotency_key
        return headers

    def content(self) -> bytes | None:
        return None if self.body is None else orjson.dumps(self.body)

    def outcome(self, status: int, body: bytes, headers: Mapping[str, str]) -> T:
        """The value of a 2xx answer; any other raises :class:`HubError` with the hub's code and message."""
        if not 200 <= status < 300:
            raise error_from(status, body, headers.get("Retry-After"))
        try:
            return self.read(orjson.loads(body), headers.get("Idempotent-Replayed") == "true")
        except (ValueError, KeyError, TypeError) as exc:
            raise HubError(status, "bad_answer", f"{self.method} {self.path}: {exc}") from exc


def retry_on(transport: tuple[type[Exception], ...]) -> Callable[[Exception], bool]:
    """The retry predicate of a client whose transport raises ``transport`` errors: those, and a
    :class:`HubError` worth retrying (429, 5xx)."""

    def retry(exc: Exception) -> bool:
        return worth_retrying(exc) if isinstance(exc, HubError) else isinstance(exc, transport)

    return retry


def _when(value: When | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("since/until need a timezone (UTC is assumed for text only)")
        return format_ts(value)
    return str(value)


def _query(**values: Any) -> dict[str, str]:
    return {name: str(value) for name, value in values.items() if value is not None}


def _segment(symbol: str) -> str:
    return quote(symbol.strip().upper(), safe="")


def _ticks(body: Any, key: str) -> list[Tick]:
    return [Tick.from_json(t) for t in body[key]]


class HubApi:
    """The REST routes. Subclasses set ``url`` and ``subscription`` and implement ``_send``."""

    url: str
    subscription: Callable[..., Any]

    def _send(self, call: Call[T]) -> Reply[T]:
        raise NotImplementedError

    # -- market data (no key needed) ----------------------------------------------------------

    def prices(self) -> Reply[list[Tick]]:
        """The latest tick of every symbol (``GET /prices``)."""
        return self._send(Call("GET", "/prices", lambda body, _: _ticks(body, "prices")))

    def price(self, symbol: str) -> Reply[Tick]:
        """The latest tick of one symbol; :class:`HubError` 404 ``unknown_symbol`` if it has none."""
        return self._send(Call("GET", f"/prices/{_segment(symbol)}", lambda body, _: Tick.from_json(body)))

    def history(
        self,
        symbol: str,
        since: When | None = None,
        until: When | None = None,
        limit: int | None = None,
        after_id: str | int | None = None,
    ) -> Reply[list[Tick]]:
        """Stored ticks, oldest first. To page forward pass the last tick's id as ``after_id`` (not with
        ``since``): ticks that share a time are neither skipped nor repeated."""
        params = _query(since=_when(since), until=_when(until), limit=limit, after_id=after_id)
        return self._send(Call("GET", f"/prices/{_segment(symbol)}/history", lambda b, _: _ticks(b, "ticks"), params))

    def candles(
        self,
        symbol: str,
        interval: str = "1m",
        since: When | None = None,
        until: When | None = None,
        limit: int | None = None,
    ) -> Reply[list[Candle]]:
        """OHLC and tick count per ``interval`` bucket (``1s``, ``1m``, ``5m``, ``1h``, ``1d``)."""
        params = _query(interval=interval, since=_when(since), until=_when(until), limit=limit)
        path = f"/prices/{_segment(symbol)}/candles"
        return self._send(Call("GET", path, lambda body, _: [Candle.from_json(c) for c in body["candles"]], params))

    # -- trading (the API key's own account) ---------------------------------------------------

    def buy(self, symbol: str, qty: Decimal | int | str, idempotency_key: str | None = None) -> Reply[Order]:
        """A market buy of ``qty`` (exact: a Decimal, int or decimal string). Retries of this call carry one
        Idempotency-Key, so it fills once; pass your own key to make a retry of your own safe too."""
        return self._order(symbol, "buy", qty, idempotency_key)

    def sell(self, symbol: str, qty: Decimal | int | str, idempotency_key: str | None = None) -> Reply[Order]:
        """A market sell of ``qty``; see :meth:`buy`."""
        return self._order(symbol, "sell", qty, idempotency_key)

    def _order(self, symbol: str, side: str, qty: Decimal | int | str, key: str | None) -> Reply[Order]:
        body = {"symbol": symbol, "side": side, "qty": decimal_text(qty)}
        key = key if key is not None else uuid.uuid4().hex
        return self._send(
            Call("POST", "/orders", lambda b, replayed: Order.from_json(b["order"], replayed), None, body, key)
        )

    def orders(self, limit: int | None = None, before: int | None = None) -> Reply[list[Order]]:
        """The account's orders, newest first; ``before`` an order id, for the page after it."""
        params = _query(limit=limit, before=before)
        return self._send(Call("GET", "/orders", lambda body, _: [Order.from_json(o) for o in body["orders"]], params))

    def order(self, id: int) -> Reply[Order]:
        """One of the account's orders; :class:`HubError` 404 for another account's."""
        return self._send(Call("GET", f"/orders/{int(id)}", lambda body, _: Order.from_json(body["order"])))

    def account(self) -> Reply[Account]:
        """Cash, positions and P&L of the key's account (``GET /accounts/me``)."""
        return self._send(Call("GET", "/accounts/me", lambda body, _: Account.from_json(body)))

    # -- the stream ----------------------------------------------------------------------------

    def subscribe(self, symbols: Iterable[str] | None = None, last_event_id: str | None = None, **options: Any) -> Any:
        """A subscription to this hub's stream: the client's ``subscription`` class (see
        ``tickhub.client.subscribe``)."""
        return self.subscription(self.url, symbols, last_event_id, **options)
