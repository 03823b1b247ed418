"""The Kraken bridge: the WebSocket v2 ``ticker`` channel served as SSE.

Kraken v2 writes prices as JSON numbers (``"last": 26394.10``). Decoding them as floats would lose
digits and trailing zeros, so the message is parsed with the numbers kept as their exact text.
Pairs are ``BTC/USD`` at Kraken and ``KRAKEN:BTC-USD`` on the hub (a symbol is one URL path segment).
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
    now_ts,
    ts_from_iso,
    unrecognised,
)

DEFAULT_WS_URL = "wss://ws.kraken.com/v2"
V2_METHODS = ("subscribe", "unsubscribe", "pong")  # v2's answers to our requests


def decimal_text(text: str) -> str:
    """A JSON number's exact text; exponent forms (``1.5e-05``) become plain decimals (``0.000015``)."""
    if "e" in text or "E" in text:
        try:
            return format(Decimal(text), "f")
        except InvalidOperation:
            return text
    return text


def loads_exact(text: str) -> Any:
    """JSON with every number kept as its decimal text, never a float."""
    return json.loads(text, parse_float=decimal_text, parse_int=decimal_text)


class KrakenAdapter(ExchangeAdapter):
    """``{"channel": "ticker", "type": "snapshot"|"update", "data": [{"symbol": "BTC/USD", "last": …}]}``."""

    venue = "KRAKEN"

    def plans(self) -> list[ConnectionPlan]:
        subscribe = {"method": "subscribe", "params": {"channel": "ticker", "symbol": list(self.symbols)}}
        return [ConnectionPlan(self.ws_url, (json.dumps(subscribe),), len(self.symbols))]

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
        if msg.get("channel") != "ticker" or msg.get("type") not in ("snapshot", "update"):
            if msg.get("channel") in ("status", "heartbeat", "ticker") or msg.get("method") in V2_METHODS:
                return []
            raise unrecognised(text)  # v1's {"event": ...} messages land here
        data = msg.get("data")
        if not isinstance(data, list):
            raise Malformed("missing_field", "ticker without data")
        return [self._quote(item) for item in data]

    def _quote(self, item: object) -> Quote:
        if not isinstance(item, dict):
            raise Malformed("bad_json", "ticker item is not an object")
        symbol, last = item.get("symbol"), item.get("last")
        if not isinstance(symbol, str) or not isinstance(last, str):
            raise Malformed("missing_field", "ticker without symbol or last")
        if symbol not in self.symbols:
            raise Malformed("unknown_symbol", symbol[:40])
        ts = item.get("timestamp")
        return Quote(self.hub_symbol(symbol), last, ts_from_iso(ts) if ts is not None else now_ts())


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
