"""The Kraken bridge: the WebSocket v2 ``ticker`` and ``trade`` channels served as SSE.

``ticker`` gives the last trade price with the best bid and ask and their sizes (a tick with
``bid``, ``bid_qty``, ``ask``, ``ask_qty``); ``trade`` every trade with its size, taker side and trade
id, subscribed without the snapshot of the last 50 trades (they would come again, under new seqs, on
every reconnect). Kraken v2 writes amounts as JSON numbers (``"last": 26394.10``). Decoding them as
floats would lose digits and trailing zeros, so the message is parsed with the numbers kept as their
exact text. Pairs are ``BTC/USD`` at Kraken and ``KRAKEN:BTC-USD`` on the hub (a symbol is one URL
path segment).
"""

from __future__ import annotations

import argparse
import json
from decimal import Decimal, InvalidOperation
from typing import Any

from tickhub import aio

from .bridge import BridgeSettings, ExchangeBridge
from .bridge_cli import add_bridge_arguments, common_settings, serve_bridge, split_symbols, url_setting
from .exchange import (
    BridgeError,
    ConnectionPlan,
    ExchangeAdapter,
    Malformed,
    Quote,
    book_side,
    now_ts,
    trade_id_text,
    ts_from_iso,
    unrecognised,
)

DEFAULT_WS_URL = "wss://ws.kraken.com/v2"
V2_METHODS = ("subscribe", "unsubscribe", "pong")  # v2's answers to our requests
CHANNELS = ("ticker", "trade")
# The widest plain decimal a tick may carry (tickhub.wire.DECIMAL_RE): 24 digits before the point, 18 after.
MAX_INT_DIGITS, MAX_PLACES = 24, 18


def decimal_text(text: str) -> str:
    """A JSON number's exact text; exponent forms (``1.5e-05``) become plain decimals (``0.000015``)
    when that plain form fits a tick's amounts. Any other is kept as written, to be refused as it is:
    ``1e999999999`` written out would be a billion digits."""
    if "e" in text or "E" in text:
        try:
            value = Decimal(text)
        except InvalidOperation:
            return text
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and value.adjusted() < MAX_INT_DIGITS and exponent >= -MAX_PLACES:
            return format(value, "f")
    return text


def loads_exact(text: str) -> Any:
    """JSON with every number kept as its decimal text, never a float."""
    return json.loads(text, parse_float=decimal_text, parse_int=decimal_text)


class KrakenAdapter(ExchangeAdapter):
    """``{"channel": "ticker"|"trade", "type": "snapshot"|"update", "data": [{"symbol": "BTC/USD", …}]}``."""

    venue = "KRAKEN"

    def plans(self) -> list[ConnectionPlan]:
        symbols = list(self.symbols)
        ticker = {"method": "subscribe", "params": {"channel": "ticker", "symbol": symbols}}
        trade = {"method": "subscribe", "params": {"channel": "trade", "symbol": symbols, "snapshot": False}}
        messages = (json.dumps(ticker), json.dumps(trade))
        return [ConnectionPlan(self.ws_url, messages, len(self.symbols) * len(CHANNELS))]

    def decode(self, text: str) -> list[Quote]:
        try:
            msg = loads_exact(text)
        except (ValueError, RecursionError):
            raise Malformed("bad_json") from None
        if not isinstance(msg, dict):
            raise unrecognised(text)  # v1 sends its data as arrays
        if msg.get("method") == "subscribe" and msg.get("success") is False:
            raise BridgeError(f"Kraken refused the subscription to {msg.get('symbol')}: {msg.get('error')}")
        if "error" in msg:
            raise Malformed("exchange_error", str(msg["error"])[:200])
        channel = msg.get("channel")
        if channel not in CHANNELS or msg.get("type") not in ("snapshot", "update"):
            if channel in ("status", "heartbeat", *CHANNELS) or msg.get("method") in V2_METHODS:
                return []
            raise unrecognised(text)  # v1's {"event": ...} messages land here
        data = msg.get("data")
        if not isinstance(data, list):
            raise Malformed("missing_field", f"{channel} without data")
        read = self._ticker if channel == "ticker" else self._trade
        return [read(item) for item in data]

    def _item(self, item: object, price_key: str) -> tuple[dict[str, Any], str, str, str]:
        """An item's object, hub symbol, price text (under ``price_key``) and canonical ts."""
        if not isinstance(item, dict):
            raise Malformed("bad_json", "an item of data is not an object")
        symbol, price = item.get("symbol"), item.get(price_key)
        if not isinstance(symbol, str) or not isinstance(price, str):
            raise Malformed("missing_field", f"an item without symbol or {price_key}")
        if symbol not in self.symbols:
            raise Malformed("unknown_symbol", symbol[:40])
        ts = item.get("timestamp")
        return item, self.hub_symbol(symbol), price, ts_from_iso(ts) if ts is not None else now_ts()

    def _ticker(self, item: object) -> Quote:
        item, symbol, last, ts = self._item(item, "last")
        bid, bid_qty = book_side(item.get("bid"), item.get("bid_qty"))
        ask, ask_qty = book_side(item.get("ask"), item.get("ask_qty"))
        return Quote(symbol, last, ts, bid=bid, bid_qty=bid_qty, ask=ask, ask_qty=ask_qty)

    def _trade(self, item: object) -> Quote:
        item, symbol, price, ts = self._item(item, "price")
        trade_id = trade_id_text(item["trade_id"]) if "trade_id" in item else None
        return Quote(symbol, price, ts, trade_id, item.get("qty"), item.get("side"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_bridge_arguments(parser, symbols="BTC/USD,ETH/USD", port=8013, name="kraken", stale=10.0)


def build(args: argparse.Namespace) -> ExchangeBridge:
    ws_url = url_setting(args.ws_url, "TICKHUB_KRAKEN_WS_URL", DEFAULT_WS_URL, ("ws", "wss"))
    # BTC-USD is accepted too: it is how the pair is written on the hub.
    symbols = [s.replace("-", "/") for s in split_symbols(args.symbols, KrakenAdapter.venue)]
    settings = BridgeSettings(**common_settings(args, ws_url, symbols))  # type: ignore[arg-type]
    return ExchangeBridge(KrakenAdapter(ws_url, symbols), settings)


def main(args: argparse.Namespace) -> None:
    bridge = build(args)
    aio.run(serve_bridge(bridge, args.host, args.port))
