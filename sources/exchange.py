"""What an exchange adapter is: the small interface one exchange module implements.

An adapter knows its exchange's WebSocket URLs, its subscribe messages and how one message
becomes prices (:class:`Quote`); sources.bridge does everything else. A new exchange is one
subclass of :class:`ExchangeAdapter` plus its tests against a fake of that exchange.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, NamedTuple

from tickhub.wire import DECIMAL_RE, OPTIONAL_FIELDS, TickRejected, check_trade_id, format_ts, parse_ts

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Quote(NamedTuple):
    """One price from an exchange message: hub symbol, exact decimal text, canonical ts, and what else
    the message says, as the exchange wrote it: the exchange's own trade id, the trade's size and its
    aggressor's side, the best bid and ask with their sizes (None for what it does not say).

    ``price`` None is a quote-only update (Binance ``@bookTicker``): the bridge publishes it with the
    last trade price it published for the symbol, and skips it until it knows one."""

    symbol: str
    price: str | None
    ts: str
    trade_id: str | None = None
    qty: str | None = None
    side: str | None = None
    bid: str | None = None
    bid_qty: str | None = None
    ask: str | None = None
    ask_qty: str | None = None

    def fields(self) -> dict[str, str]:
        """The optional tick fields it has, by name (tickhub.wire.OPTIONAL_FIELDS)."""
        return {name: value for name in OPTIONAL_FIELDS if (value := getattr(self, name)) is not None}


class BridgeError(ValueError):
    """The exchange refused what we asked for (unknown symbol, ban at start): the bridge stops."""


class Malformed(Exception):
    """A message we cannot read; ``reason`` is its counter in /health. The bridge skips it."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Reconnect(Exception):
    """The exchange asked us to open a new connection (e.g. Binance ``serverShutdown``)."""


def ts_from_ms(ms: object) -> str:
    """Epoch milliseconds (Binance ``T``/``E``) → canonical wire ts; exact, no float rounding."""
    if type(ms) is not int or ms <= 0:
        raise Malformed("bad_ts", f"not epoch milliseconds: {str(ms)[:24]!r}")
    return format_ts(EPOCH + timedelta(milliseconds=ms))


def ts_from_iso(text: object) -> str:
    """An exchange's RFC 3339 time → canonical wire ts."""
    try:
        return format_ts(parse_ts(text))
    except TickRejected as exc:
        raise Malformed("bad_ts", str(exc)) from None


def trade_id_text(value: object) -> str:
    """An exchange's trade id (a JSON integer at Binance, Coinbase and Kraken) → its wire text, exact."""
    if type(value) is int and value >= 0:
        return str(value)
    try:
        return check_trade_id(value)
    except TickRejected:
        raise Malformed("bad_trade_id", f"not a trade id: {str(value)[:40]!r}") from None


def book_side(price: Any, size: Any) -> tuple[Any, Any]:
    """One side of a best quote as (price, size); (None, None) when the side is empty: exchanges write a
    price of 0 for a side without orders, and a tick leaves out what the source lacks, never 0."""
    if price is None or (type(price) is str and DECIMAL_RE.match(price) is not None and not price.strip("0.")):
        return None, None
    return price, size


def unrecognised(text: str) -> Malformed:
    """A message of a kind the adapter does not know (another API version, another channel)."""
    return Malformed("unrecognised", text[:80])


def now_ts() -> str:
    """For prices that carry no time of their own (REST snapshots)."""
    return format_ts(datetime.now(UTC))


@dataclass(frozen=True)
class ConnectionPlan:
    """One WebSocket: where to connect and what to send once connected."""

    url: str
    messages: tuple[str, ...] = ()
    streams: int = 0


class ExchangeAdapter:
    """What one exchange's WebSocket feed looks like. Subclasses set the class attributes and
    implement :meth:`plans` and :meth:`decode`; they never touch sockets or the feed."""

    venue: ClassVar[str]  # prefix of hub symbols: "BINANCE" → "BINANCE:BTCUSDT"
    #: Most messages we send per second on one connection (exchanges drop faster clients).
    messages_per_second: ClassVar[int] = 4

    def __init__(self, ws_url: str, symbols: Sequence[str]) -> None:
        self.ws_url = ws_url.rstrip("/")
        self.symbols = tuple(symbols)

    def hub_symbol(self, native: str) -> str:
        """``BTC/USD`` → ``KRAKEN:BTC-USD``: upper case, venue-qualified, one URL path segment."""
        return f"{self.venue}:{native.upper().replace('/', '-')}"

    def plans(self) -> list[ConnectionPlan]:
        raise NotImplementedError

    def decode(self, text: str) -> list[Quote]:
        """Quotes in one text message; [] for the acks and heartbeats the exchange documents. Anything
        else raises: Malformed (``unrecognised`` for a kind of message it does not know), Reconnect or
        BridgeError. /health tells a link that brings only messages the adapter cannot read."""
        raise NotImplementedError
