"""End to end: fake exchange → bridge (in this loop) → hub → an SSE subscriber and PostgreSQL rows,
for each exchange, with the exchange's exact decimal text kept all the way."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson
from fake_exchanges import FakeBinance, FakeCoinbase, FakeExchange, FakeKraken
from helpers import delivered, get_json, running_bridge, running_hub, subscribe, wait_for, written
from test_binance import TRADE_MS, binance_settings
from test_coinbase_kraken import coinbase_bridge, kraken_bridge

from sources.binance import BinanceBridge
from sources.bridge import ExchangeBridge
from tickhub.config import Settings
from tickhub.wire import format_ts

STORED = "SELECT symbol, price::text AS price, ts FROM ticks WHERE source = $1 ORDER BY id"


async def stored(settings: Settings, source: str) -> list[tuple[str, str, str]]:
    conn = await asyncpg.connect(settings.database_url, server_settings={"search_path": settings.database_schema})
    try:
        rows = await conn.fetch(STORED, source)
    finally:
        await conn.close()
    return [(r["symbol"], r["price"], format_ts(r["ts"])) for r in rows]


async def through_the_hub(
    settings: Settings,
    fake: FakeExchange,
    bridge: ExchangeBridge,
    push: Callable[[], Awaitable[None]],
    expected: list[tuple[str, str, str]],
    startup: int,
) -> None:
    """Run bridge and hub; once the hub has the ``startup`` ticks (snapshots), ``push`` makes the
    exchange trade. Every expected (symbol, price, ts) must reach a subscriber and PostgreSQL unchanged."""
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
    assert [(t["symbol"], t["price"], t["ts"]) for t in ticks] == expected
    assert all(t["source"] == source for t in ticks)
    assert (await stored(settings, source))[-len(expected) :] == expected


async def test_binance_trades_reach_subscribers_and_postgresql_exactly(settings: Settings) -> None:
    async with FakeBinance() as fake:
        bridge = BinanceBridge(binance_settings(fake, symbols=("BTCUSDT",)))

        async def push() -> None:
            conn = fake.connections[0]
            await conn.send(fake.trade("BTCUSDT", "43210.55000000", TRADE_MS))
            await conn.send(fake.trade("BTCUSDT", "43210.50001000", TRADE_MS + 1))

        expected = [
            ("BINANCE:BTCUSDT", "43210.55000000", "2026-11-23T19:00:00.121000Z"),
            ("BINANCE:BTCUSDT", "43210.50001000", "2026-11-23T19:00:00.122000Z"),
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

        expected = [("COINBASE:ETH-USD", "3012.10", "2026-11-23T19:00:00.500000Z")]
        await through_the_hub(settings, fake, coinbase_bridge(fake, ("ETH-USD",)), push, expected, startup=0)


async def test_kraken_float_prices_reach_subscribers_and_postgresql_exactly(settings: Settings) -> None:
    async with FakeKraken() as fake:

        async def push() -> None:
            await fake.connections[0].send(FakeKraken.ticker_update("BTC/USD", "26394.123456789012345"))
            await fake.connections[0].send(FakeKraken.ticker_update("BTC/USD", "26394.10"))

        expected: list[Any] = [
            ("KRAKEN:BTC-USD", "26394.123456789012345", "2026-11-23T19:00:00.654321Z"),
            ("KRAKEN:BTC-USD", "26394.10", "2026-11-23T19:00:00.654321Z"),
        ]
        await through_the_hub(settings, fake, kraken_bridge(fake, ("BTC/USD",)), push, expected, startup=1)


def test_orjson_would_have_lost_krakens_digits() -> None:
    """Why the Kraken adapter parses numbers as text: a float keeps ~17 significant digits."""
    assert str(orjson.loads(FakeKraken.ticker_update("BTC/USD", "26394.123456789012345"))["data"][0]["last"]) != (
        "26394.123456789012345"
    )
