"""The Binance bridge: spot trades and best quotes over WebSocket combined streams (or REST polling) served as SSE.

WebSocket mode: ``exchangeInfo`` checks the symbols, a ``ticker/price`` snapshot seeds one price per
symbol, then ``<symbol>@trade`` streams carry every trade (price, size, aggressor side, trade id)
exactly as Binance wrote it, and ``<symbol>@bookTicker`` streams every change of the best bid and ask:
a tick at the last trade price with the quote, stamped with the bridge's clock (the spot stream has no
time of its own). At most 1024 streams share a connection; the first ``url_streams`` go in the URL,
the rest in SUBSCRIBE messages sent under 5 per second. Connections are renewed before Binance's 24 h limit and on a
``serverShutdown`` event. REST mode polls ``ticker/price`` for every pair (or ``--symbols``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from tickhub import aio
from tickhub.backoff import Backoff

from .binance_rest import BinanceRest, TickerPoller, ticker_prices, trading_symbols, with_retries
from .bridge import BridgeSettings, ExchangeBridge
from .bridge_cli import add_bridge_arguments, common_settings, serve_bridge, split_symbols, url_setting
from .exchange import (
    ConnectionPlan,
    ExchangeAdapter,
    Malformed,
    Quote,
    Reconnect,
    book_side,
    now_ts,
    trade_id_text,
    ts_from_ms,
    unrecognised,
)

DEFAULT_WS_URL = "wss://stream.binance.com:9443"
DEFAULT_REST_URL = "https://api.binance.com"
DEFAULT_SYMBOLS = "BTCUSDT,ETHUSDT"
MAX_STREAMS = 1024  # per connection, Binance's limit
MAX_AGE = 23.5 * 3600  # renew before Binance closes a connection at 24 h


def _chunks(items: Sequence[str], size: int) -> list[Sequence[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class BinanceAdapter(ExchangeAdapter):
    """Binance spot ``@trade`` and ``@bookTicker`` combined streams: ``{"stream": "btcusdt@trade", "data":
    {"e": "trade", ...}}``. A trade's ``p``, ``q`` and ``t`` are the tick's price, qty and trade_id; ``m``
    (the buyer is the maker) means the seller was the aggressor, side ``sell``. A book ticker's ``b``,
    ``B``, ``a``, ``A`` are its bid, bid_qty, ask and ask_qty, with no price of its own."""

    venue = "BINANCE"
    messages_per_second = 4  # Binance allows 5 incoming messages/s per connection, pongs included

    def __init__(
        self,
        ws_url: str,
        symbols: Sequence[str],
        max_streams: int = MAX_STREAMS,
        url_streams: int = 200,
        subscribe_batch: int = 200,
    ) -> None:
        super().__init__(ws_url, symbols)
        self.max_streams = max_streams
        self.url_streams = url_streams  # a long stream list would make an over-long URL
        self.subscribe_batch = subscribe_batch
        self._known = set(self.symbols)

    def plans(self) -> list[ConnectionPlan]:
        streams = [f"{s.lower()}@{kind}" for s in self.symbols for kind in ("trade", "bookTicker")]
        plans = []
        for group in _chunks(streams, self.max_streams):
            in_url, later = group[: self.url_streams], group[self.url_streams :]
            messages = tuple(
                orjson.dumps({"method": "SUBSCRIBE", "params": list(batch), "id": n}).decode()
                for n, batch in enumerate(_chunks(later, self.subscribe_batch), start=1)
            )
            plans.append(ConnectionPlan(f"{self.ws_url}/stream?streams={'/'.join(in_url)}", messages, len(group)))
        return plans

    def decode(self, text: str) -> list[Quote]:
        try:
            msg = orjson.loads(text)  # Binance quotes prices as strings, so plain JSON keeps them exact
        except orjson.JSONDecodeError:
            raise Malformed("bad_json") from None
        if not isinstance(msg, dict):
            raise unrecognised(text)
        data = msg.get("data", msg)
        event = msg.get("event")  # the WebSocket API wraps connection events as {"event": {...}}
        if "serverShutdown" in (msg.get("e"), _get(data, "e"), _get(event, "e")):
            raise Reconnect("Binance announced serverShutdown")
        if "id" in msg and "result" in msg:
            return []  # a SUBSCRIBE acknowledgement
        if "error" in msg or "code" in msg:
            raise Malformed("exchange_error", str(msg.get("error") or msg.get("msg"))[:200])
        if not isinstance(data, dict):
            raise unrecognised(text)
        if data.get("e") == "trade":
            return [self._trade(data)]
        if "e" not in data and "u" in data and "b" in data and "a" in data:  # the book ticker has no event type
            return [self._book_ticker(data)]
        raise unrecognised(text)  # we subscribe to trades and book tickers only

    def _symbol(self, data: dict[str, Any]) -> str:
        symbol = data.get("s")
        if not isinstance(symbol, str):
            raise Malformed("missing_field", "no symbol (s)")
        if symbol not in self._known:
            raise Malformed("unknown_symbol", symbol[:40])
        return self.hub_symbol(symbol)

    def _trade(self, data: dict[str, Any]) -> Quote:
        price, ms, maker = data.get("p"), data.get("T", data.get("E")), data.get("m")
        if not isinstance(price, str):
            raise Malformed("missing_field", "trade without p")
        symbol = self._symbol(data)
        if maker is not None and type(maker) is not bool:
            raise Malformed("bad_side", f"m is not a boolean: {str(maker)[:20]!r}")
        side = None if maker is None else "sell" if maker else "buy"  # the buyer made the book: a seller took it
        trade_id = trade_id_text(data["t"]) if "t" in data else None
        return Quote(symbol, price, ts_from_ms(ms), trade_id, data.get("q"), side)

    def _book_ticker(self, data: dict[str, Any]) -> Quote:
        symbol = self._symbol(data)
        bid, bid_qty = book_side(data.get("b"), data.get("B"))
        ask, ask_qty = book_side(data.get("a"), data.get("A"))
        return Quote(symbol, None, now_ts(), bid=bid, bid_qty=bid_qty, ask=ask, ask_qty=ask_qty)


def _get(obj: object, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else None


@dataclass(frozen=True)
class BinanceSettings(BridgeSettings):
    max_age: float | None = MAX_AGE
    stale_timeout: float = 45.0  # Binance pings every 20 s, so a live link is never quiet this long
    rest_url: str = DEFAULT_REST_URL
    mode: str = "ws"  # or "rest"
    interval: float = 5.0  # REST mode: seconds between polls
    max_streams: int = MAX_STREAMS
    url_streams: int = 200  # the rest go in SUBSCRIBE messages
    subscribe_batch: int = 200
    weight_limit: int = 6000  # Binance's request weight per minute per IP
    rest_timeout: float = 10.0
    startup_attempts: int = 5


class BinanceBridge(ExchangeBridge):
    """The Binance adapter plus its REST side: symbol checks, the seed snapshot, REST mode."""

    settings: BinanceSettings

    def __init__(self, settings: BinanceSettings) -> None:
        s = settings
        adapter = BinanceAdapter(s.ws_url, s.symbols, s.max_streams, s.url_streams, s.subscribe_batch)
        super().__init__(adapter, settings)
        self.mode = settings.mode
        self.rest: BinanceRest | None = None
        self.poller: TickerPoller | None = None

    async def __aenter__(self) -> BinanceBridge:
        await super().__aenter__()
        s = self.settings
        self.rest = BinanceRest(self.session, s.rest_url, s.rest_timeout, s.weight_limit)
        return self

    async def prepare(self) -> None:
        """Refuse unknown or halted symbols; publish one price per symbol (WebSocket mode) before serving."""
        s, rest = self.settings, self.rest
        assert rest is not None, "use the bridge as an async context manager"
        symbols = list(s.symbols) or None
        backoff, attempts = Backoff(s.reconnect_min, s.reconnect_max), s.startup_attempts
        allowed = await with_retries(lambda: trading_symbols(rest, symbols), "read exchangeInfo", attempts, backoff)
        if s.mode == "rest":
            self.poller = TickerPoller(self, rest, s.interval, symbols, allowed)
            return
        rows = await with_retries(lambda: ticker_prices(rest, symbols), "read ticker/price", attempts, backoff)
        ts = now_ts()
        for row in rows:  # ordinary events, before any consumer: the first one is given them from the ring
            if isinstance(row, dict) and row.get("symbol") in allowed and isinstance(row.get("price"), str):
                self.publish(Quote(self.adapter.hub_symbol(row["symbol"]), row["price"], ts))

    async def stream(self) -> None:
        if self.poller is not None:
            await self.poller.run()
        else:
            await super().stream()

    def health(self) -> dict[str, Any]:
        body = super().health()
        if self.rest is not None:
            body["rest"] = self.rest.health()
            if self.rest.state == "banned":
                body["status"], body["reason"] = "banned", "Binance banned this IP (HTTP 418): see rest"
        if self.poller is not None:
            body["poll"] = self.poller.health()
            body["symbols"] = len(self.poller.allowed)
            if body["status"] == "degraded" and self.poller.ok and self.error is None:
                body["status"], body["reason"] = "ok", None  # REST mode has no WebSocket connections to count
        return body


def add_arguments(parser: argparse.ArgumentParser) -> None:
    symbols_help = f"{DEFAULT_SYMBOLS}; with --mode rest: all, every TRADING pair"
    add_bridge_arguments(
        parser, symbols=DEFAULT_SYMBOLS, port=8011, name="binance", stale=45.0, symbols_help=symbols_help
    )
    parser.add_argument("--rest-url", default=None, help="REST base URL (overrides TICKHUB_BINANCE_REST_URL)")
    parser.add_argument("--mode", choices=("ws", "rest"), default="ws", help="WebSocket trades or REST polling")
    parser.add_argument("--interval", type=float, default=5.0, help="REST mode: seconds between polls")
    parser.add_argument("--max-age", type=float, default=MAX_AGE, help="seconds before a connection is renewed")
    parser.add_argument("--max-streams", type=int, default=MAX_STREAMS, help="streams per WebSocket (max 1024)")
    parser.add_argument("--weight-limit", type=int, default=6000, help="REST request weight allowed per minute")


def settings_from_args(args: argparse.Namespace) -> BinanceSettings:
    ws_url = url_setting(args.ws_url, "TICKHUB_BINANCE_WS_URL", DEFAULT_WS_URL, ("ws", "wss"))
    rest_url = url_setting(args.rest_url, "TICKHUB_BINANCE_REST_URL", DEFAULT_REST_URL, ("http", "https"))
    raw = args.symbols if args.symbols is not None else ("all" if args.mode == "rest" else DEFAULT_SYMBOLS)
    if raw.strip().lower() == "all":
        if args.mode != "rest":
            raise ValueError("--symbols all needs --mode rest")
        symbols: list[str] = []
    else:
        symbols = split_symbols(raw, BinanceAdapter.venue)
    if args.interval <= 0 or args.max_age <= 0 or args.weight_limit <= 0:
        raise ValueError("--interval, --max-age and --weight-limit must be > 0")
    if not 1 <= args.max_streams <= MAX_STREAMS:
        raise ValueError(f"--max-streams must be 1..{MAX_STREAMS}")
    return BinanceSettings(
        **common_settings(args, ws_url, symbols),  # type: ignore[arg-type]
        rest_url=rest_url,
        mode=args.mode,
        interval=args.interval,
        max_age=args.max_age,
        max_streams=args.max_streams,
        weight_limit=args.weight_limit,
    )


def main(args: argparse.Namespace) -> None:
    bridge = BinanceBridge(settings_from_args(args))
    aio.run(serve_bridge(bridge, args.host, args.port))
