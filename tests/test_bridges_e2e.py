"""End to end: fake exchange → bridge (in this loop) → hub → an SSE subscriber and PostgreSQL rows,
for each exchange, with the exchange's exact decimal text kept all the way."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson
from fake_exchanges import FakeBinance, FakeCoinbase, FakeExchange, FakeKraken, sample
from helpers import delivered, get_json, running_bridge, running_hub, subscribe, wait_for, written
from test_binance import TRADE_MS, binance_settings
from test_coinbase_kraken import coinbase_bridge, kraken_bridge

from sources.binance import BinanceBridge
from sources.bridge import ExchangeBridge
from tickhub.config import Settings
from tickhub.wire import OPTIONAL_FIELDS, format_ts

STORED = (
    "SELECT symbol, price::text, ts, qty::text, side, trade_id, bid::text, bid_qty::text, ask::text, ask_qty::text"
    " FROM ticks WHERE source = $1 ORDER BY id"
)
COLUMNS = ("symbol", "price", "ts", *OPTIONAL_FIELDS)


async def stored(settings: Settings, source: str) -> list[dict[str, str]]:
    """The source's rows as the fields of its ticks (absent ones left out, as on the wire)."""
    conn = await asyncpg.connect(settings.database_url, server_settings={"search_path": settings.database_schema})
    try:
        rows = await conn.fetch(STORED, source)
    finally:
        await conn.close()
    return [
        {k: format_ts(v) if k == "ts" else v for k, v in zip(COLUMNS, r, strict=True) if v is not None} for r in rows
    ]


async def through_the_hub(
    settings: Settings,
    fake: FakeExchange,
    bridge: ExchangeBridge,
    push: Callable[[], Awaitable[None]],
    expected: list[dict[str, Any]],
    startup: int,
) -> None:
    """Run bridge and hub; once the hub has the ``startup`` ticks (snapshots), ``push`` makes the
    exchange trade. Every expected tick (symbol, price, ts and its optional fields, in the wire's order;
    ts None for the bridge's own clock) must reach a subscriber, PostgreSQL and history unchanged."""
    source = bridge.settings.name
    async with running_bridge(bridge) as running:
        await fake.connection(0)
        async with running_hub(settings.replace(sources=((source, running.url),))) as hub:
            client = hub.hub.ingest.clients[source]
            await wait_for(lambda: running.bridge.feed.consumers and client.stats.accepted >= startup, what="start-up")
            await wait_for(lambda: delivered(hub.hub), what="the start-up ticks to be delivered")
            async with subscribe(hub.url) as stream:
                await stream.next_event("snapshot")
                await push()
                ticks = await stream.ticks(len(expected))
            await wait_for(lambda: written(hub.hub), what="the writer")
            assert sum(client.stats.rejects.values()) == 0
            _, history = await get_json(f"{hub.url}/prices/{expected[0]['symbol']}/history")
    expected = [e if e["ts"] is not None else e | {"ts": t["ts"]} for e, t in zip(expected, ticks, strict=True)]
    assert [list({k: v for k, v in t.items() if k not in ("id", "source", "seq")}.items()) for t in ticks] == [
        list(e.items()) for e in expected
    ], "every field as the exchange wrote it, in the wire's order"
    assert all(t["source"] == source for t in ticks)
    assert (await stored(settings, source))[-len(expected) :] == expected
    by_id = {t["id"]: t for t in history["ticks"]}  # history is in source time order, streams in hub order
    assert [list(by_id[t["id"]].items()) for t in ticks] == [list(t.items()) for t in ticks]


async def test_binance_trades_and_quotes_reach_subscribers_postgresql_and_history_exactly(settings: Settings) -> None:
    async with FakeBinance() as fake:
        bridge = BinanceBridge(binance_settings(fake, symbols=("BTCUSDT",)))

        async def push() -> None:
            conn = fake.connections[0]
            await conn.send(fake.trade("BTCUSDT", "43210.55000000", TRADE_MS, 3512345679))
            await conn.send(fake.book_ticker("BTCUSDT", "43210.50001000", "0.00000000", "43210.55000000", "12.5"))
            trade = fake.trade("BTCUSDT", "43210.50001000", TRADE_MS + 1, 3512345680)
            trade["data"] |= {"q": "100.00000001", "m": False}
            await conn.send(trade)

        at = "2026-11-23T19:00:00.121000Z"
        expected = [
            {"symbol": "BINANCE:BTCUSDT", "price": "43210.55000000", "ts": at, "qty": "0.00150000", "side": "sell"}
            | {"trade_id": "3512345679"},
            {"symbol": "BINANCE:BTCUSDT", "price": "43210.55000000", "ts": None}  # the last trade's price
            | {"bid": "43210.50001000", "bid_qty": "0.00000000", "ask": "43210.55000000", "ask_qty": "12.5"},
            {"symbol": "BINANCE:BTCUSDT", "price": "43210.50001000", "ts": "2026-11-23T19:00:00.122000Z"}
            | {"qty": "100.00000001", "side": "buy", "trade_id": "3512345680"},
        ]
        await through_the_hub(settings, fake, bridge, push, expected, startup=1)


async def test_exchange_trade_ids_reach_subscribers_postgresql_and_history_exactly(settings: Settings) -> None:
    """Binance's trade id ``t`` (here one past 2^53, where a float would round it) travels fake exchange →
    bridge → hub → subscriber → PostgreSQL → /prices/{symbol}/history as the same digits."""
    trade_ids = [3512345679, 9007199254740993]
    async with FakeBinance() as fake:
        bridge = BinanceBridge(binance_settings(fake, symbols=("BTCUSDT",)))
        async with running_bridge(bridge) as running:
            conn = await fake.connection(0)
            async with running_hub(settings.replace(sources=(("binance", running.url),))) as hub:
                client = hub.hub.ingest.clients["binance"]
                await wait_for(lambda: client.stats.accepted >= 1, what="the start-up snapshot")
                await wait_for(lambda: delivered(hub.hub), what="the snapshot to be delivered")
                async with subscribe(hub.url) as stream:
                    await stream.next_event("snapshot")
                    for n, trade_id in enumerate(trade_ids):
                        await conn.send(fake.trade("BTCUSDT", f"4321{n}.50000000", TRADE_MS + n, trade_id))
                    ticks = await stream.ticks(2)
                await wait_for(lambda: written(hub.hub), what="the writer")
                status, history = await get_json(f"{hub.url}/prices/BINANCE:BTCUSDT/history")
            stored = await stored_trade_ids(settings)
    expected = [str(t) for t in trade_ids]
    assert [t["trade_id"] for t in ticks] == expected
    assert stored == [None, *expected], "the start-up snapshot is a price, not a trade"
    assert status == 200 and len(history["ticks"]) == 3
    assert [t for t in history["ticks"] if "trade_id" in t] == ticks, "history gives back the streamed ticks"


async def stored_trade_ids(settings: Settings) -> list[str | None]:
    conn = await asyncpg.connect(settings.database_url, server_settings={"search_path": settings.database_schema})
    try:
        rows = await conn.fetch("SELECT trade_id FROM ticks WHERE source = 'binance' ORDER BY id")
    finally:
        await conn.close()
    return [r["trade_id"] for r in rows]


async def test_coinbase_tickers_reach_subscribers_and_postgresql_exactly(settings: Settings) -> None:
    async with FakeCoinbase() as fake:

        async def push() -> None:
            await fake.connections[0].send(fake.ticker("ETH-USD", "3012.10", "2026-11-23T19:00:00.5Z"))

        ticker = sample("coinbase_ticker")
        expected = [
            {"symbol": "COINBASE:ETH-USD", "price": "3012.10", "ts": "2026-11-23T19:00:00.500000Z"}
            | {"qty": ticker["last_size"], "side": "buy", "trade_id": str(fake._trade_id + 1)}
            | {"bid": ticker["best_bid"], "bid_qty": ticker["best_bid_size"], "ask": ticker["best_ask"]}
            | {"ask_qty": ticker["best_ask_size"]}
        ]
        await through_the_hub(settings, fake, coinbase_bridge(fake, ("ETH-USD",)), push, expected, startup=0)


async def test_kraken_float_prices_reach_subscribers_and_postgresql_exactly(settings: Settings) -> None:
    async with FakeKraken() as fake:

        async def push() -> None:
            await fake.connections[0].send(FakeKraken.ticker_update("BTC/USD", "26394.123456789012345"))
            await fake.connections[0].send(FakeKraken.trade_update("BTC/USD", "26394.10", "0.000100", "sell", 42))

        at = "2026-11-23T19:00:00.654321Z"
        quote = {"bid": "26394.0", "bid_qty": "0.2", "ask": "26394.1", "ask_qty": "1.1"}
        expected: list[Any] = [
            {"symbol": "KRAKEN:BTC-USD", "price": "26394.123456789012345", "ts": at} | quote,
            {"symbol": "KRAKEN:BTC-USD", "price": "26394.10", "ts": at, "qty": "0.000100", "side": "sell"}
            | {"trade_id": "42"},
        ]
        await through_the_hub(settings, fake, kraken_bridge(fake, ("BTC/USD",)), push, expected, startup=1)


def test_orjson_would_have_lost_krakens_digits() -> None:
    """Why the Kraken adapter parses numbers as text: a float keeps ~17 significant digits."""
    assert str(orjson.loads(FakeKraken.ticker_update("BTC/USD", "26394.123456789012345"))["data"][0]["last"]) != (
        "26394.123456789012345"
    )
