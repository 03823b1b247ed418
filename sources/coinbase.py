"""The Coinbase Exchange bridge: the public ``ticker`` channel served as SSE.

One WebSocket subscribes to ``ticker`` (a message per trade: price, ``last_size``, the taker's
``side`` and ``trade_id``, with the best bid and ask and their sizes after it, all decimal strings) and
``heartbeat`` (one message per product each second, so a silent market never looks
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
    book_side,
    trade_id_text,
    ts_from_iso,
    unrecognised,
)

DEFAULT_WS_URL = "wss://ws-feed.exchange.coinbase.com"


class CoinbaseAdapter(ExchangeAdapter):
    """``{"type": "ticker", "product_id": "BTC-USD", "price": "…", "time": "…"}`` → ``COINBASE:BTC-USD``;
    ``last_size``, ``side``, ``trade_id``, ``best_bid``, ``best_bid_size``, ``best_ask``, ``best_ask_size``
    are the tick's qty, side, trade_id, bid, bid_qty, ask and ask_qty when the message has them."""

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
        bid, bid_qty = book_side(msg.get("best_bid"), msg.get("best_bid_size"))
        ask, ask_qty = book_side(msg.get("best_ask"), msg.get("best_ask_size"))
        return [
            Quote(
                self.hub_symbol(product),
                price,
                ts_from_iso(msg.get("time")),
                trade_id,
                msg.get("last_size"),
                msg.get("side"),  # the taker's: Coinbase's ticker documents it so (a match's is the maker's)
                bid,
                bid_qty,
                ask,
                ask_qty,
            )
        ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_bridge_arguments(parser, symbols="BTC-USD,ETH-USD", port=8012, name="coinbase", stale=10.0)


def build(args: argparse.Namespace) -> ExchangeBridge:
    ws_url = url_setting(args.ws_url, "TICKHUB_COINBASE_WS_URL", DEFAULT_WS_URL, ("ws", "wss"))
    symbols = split_symbols(args.symbols, CoinbaseAdapter.venue)
    settings = BridgeSettings(**common_settings(args, ws_url, symbols))
    return ExchangeBridge(CoinbaseAdapter(ws_url, symbols), settings)


def main(args: argparse.Namespace) -> None:
    bridge = build(args)
    aio.run(serve_bridge(bridge, args.host, args.port))
