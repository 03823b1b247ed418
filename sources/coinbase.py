"""The Coinbase Exchange bridge: the public ``ticker`` channel served as SSE.

One WebSocket subscribes to ``ticker`` (a message per trade, price as a decimal string, with its
``trade_id``) and ``heartbeat`` (one message per product each second, so a silent market never looks
like a dead link). On every subscribe Coinbase sends each product's latest trade again; the bridge
drops a trade id it already published in this run (sources.bridge).
"""

from __future__ import annotations

import argparse

import orjson

from tickhub import aio

from .bridge import BridgeSettings, ExchangeBridge
from .bridge_cli import add_bridge_arguments, common_settings, serve_bridge, split_symbols, url_setting
from .exchange import (
    BridgeError,
    ConnectionPlan,
    ExchangeAdapter,
    Malformed,
    Quote,
    trade_id_text,
    ts_from_iso,
    unrecognised,
)

DEFAULT_WS_URL = "wss://ws-feed.exchange.coinbase.com"


class CoinbaseAdapter(ExchangeAdapter):
    """``{"type": "ticker", "product_id": "BTC-USD", "price": "…", "time": "…"}`` → ``COINBASE:BTC-USD``."""

    venue = "COINBASE"

    def plans(self) -> list[ConnectionPlan]:
        subscribe = {"type": "subscribe", "product_ids": list(self.symbols), "channels": ["heartbeat", "ticker"]}
        return [ConnectionPlan(self.ws_url, (orjson.dumps(subscribe).decode(),), len(self.symbols))]

    def decode(self, text: str) -> list[Quote]:
        try:
            msg = orjson.loads(text)  # Coinbase quotes prices as strings, so plain JSON keeps them exact
        except orjson.JSONDecodeError:
            raise Malformed("bad_json") from None
        if not isinstance(msg, dict):
            raise unrecognised(text)
        kind = msg.get("type")
        if kind == "error":
            detail = f"{msg.get('message')}: {msg.get('reason')}"
            if "subscribe" in str(msg.get("message", "")).lower():
                raise BridgeError(f"Coinbase refused the subscription, {detail}")
            raise Malformed("exchange_error", detail[:200])
        if kind in ("subscriptions", "heartbeat"):
            return []
        if kind != "ticker":
            raise unrecognised(text)
        product, price = msg.get("product_id"), msg.get("price")
        if not isinstance(product, str) or not isinstance(price, str):
            raise Malformed("missing_field", "ticker without product_id or price")
        if product not in self.symbols:
            raise Malformed("unknown_symbol", product[:40])
        trade_id = trade_id_text(msg["trade_id"]) if "trade_id" in msg else None
        return [Quote(self.hub_symbol(product), price, ts_from_iso(msg.get("time")), trade_id)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_bridge_arguments(parser, symbols="BTC-USD,ETH-USD", port=8012, name="coinbase", stale=10.0)


def build(args: argparse.Namespace) -> ExchangeBridge:
    ws_url = url_setting(args.ws_url, "TICKHUB_COINBASE_WS_URL", DEFAULT_WS_URL, ("ws", "wss"))
    symbols = split_symbols(args.symbols, CoinbaseAdapter.venue)
    settings = BridgeSettings(**common_settings(args, ws_url, symbols))  # type: ignore[arg-type]
    return ExchangeBridge(CoinbaseAdapter(ws_url, symbols), settings)


def main(args: argparse.Namespace) -> None:
    bridge = build(args)
    aio.run(serve_bridge(bridge, args.host, args.port))
