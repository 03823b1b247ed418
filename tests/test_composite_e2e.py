"""Composite prices end to end: fake exchanges behind their bridges → hub → /stream, /prices,
/health, /instruments, /metrics and PostgreSQL; resume of a composite subscriber from the ring,
from PostgreSQL and across a hub restart, with the venues byte for byte."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from fake_exchanges import FakeCoinbase, FakeKraken
from helpers import SSEStream, delivered, get_json, running_bridge, running_hub, running_mock, subscribe, wait_for
from test_coinbase_kraken import coinbase_bridge, kraken_bridge
from test_observability import metric

from tickhub.config import Settings
from tickhub.hub import Hub
from tickhub.wire import SSEEvent, format_ts

WINDOW = 1.5  # short, so a stopped venue drops out quickly
STORED = "SELECT price::text AS price, extra FROM ticks WHERE source = 'composite' ORDER BY id"


def now_iso(ago: float = 0.0) -> str:
    return format_ts(datetime.now(UTC) - timedelta(seconds=ago))


async def get_bytes(url: str) -> bytes:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return await response.read()


async def stored_composites(settings: Settings) -> list[tuple[str, Any]]:
    conn = await asyncpg.connect(settings.database_url, server_settings={"search_path": settings.database_schema})
    try:
        return [(r["price"], orjson.loads(r["extra"])) for r in await conn.fetch(STORED)]
    finally:
        await conn.close()


def venues_of(event: SSEEvent) -> list[tuple[str, str]]:
    return [(v["source"], v["price"]) for v in orjson.loads(event.data)["venues"]]


def health_of(hub: Hub) -> dict[str, Any]:
    return hub.composite.health()["BTC-USD"]


def names(venues: list[dict[str, Any]]) -> list[str]:
    return [v["source"] for v in venues]


async def test_two_exchanges_make_the_median_and_a_stopped_venue_drops_out(settings: Settings) -> None:
    async with contextlib.AsyncExitStack() as stack:
        coinbase = await stack.enter_async_context(FakeCoinbase())
        kraken = await stack.enter_async_context(FakeKraken())
        cb = await stack.enter_async_context(running_bridge(coinbase_bridge(coinbase, ("BTC-USD",))))
        kraken_stack = await stack.enter_async_context(contextlib.AsyncExitStack())
        kr = await kraken_stack.enter_async_context(running_bridge(kraken_bridge(kraken, ("BTC/USD",))))
        hub_settings = settings.replace(
            sources=(("coinbase", cb.url), ("kraken", kr.url)), instruments="", composite_window=WINDOW
        )
        running = await stack.enter_async_context(running_hub(hub_settings))
        hub = running.hub
        cb_client, kr_client = hub.ingest.clients["coinbase"], hub.ingest.clients["kraken"]
        # Kraken's subscribe snapshot (a 2023 price) reaches the hub first: too old to count.
        await wait_for(lambda: cb.bridge.feed.consumers and kr_client.stats.accepted >= 1, what="start-up")
        await wait_for(lambda: delivered(hub), what="the start-up ticks to reach the composite")
        assert health_of(hub)["status"] == "no_composite" and names(health_of(hub)["stale"]) == ["kraken"]
        stream = await stack.enter_async_context(subscribe(running.url, "?symbols=BTC-USD"))
        await stream.next_event("snapshot")

        await coinbase.connections[0].send(coinbase.ticker("BTC-USD", "43000.10", now_iso()))
        first = await stream.next_event("tick")
        await kraken.connections[0].send(FakeKraken.ticker_update("BTC/USD", "43000.25", now_iso()))
        second = await stream.next_event("tick")
        tick = orjson.loads(second.data)
        assert (tick["source"], tick["symbol"], tick["price"]) == ("composite", "BTC-USD", "43000.175")
        assert venues_of(first) == [("coinbase", "43000.10")]
        assert venues_of(second) == [("coinbase", "43000.10"), ("kraken", "43000.25")]
        assert [v["symbol"] for v in tick["venues"]] == ["COINBASE:BTC-USD", "KRAKEN:BTC-USD"]
        assert await get_bytes(f"{running.url}/prices/BTC-USD") == second.data.encode()

        # Kraken 4.7% off Coinbase: with two venues neither can be trusted, so nothing is published.
        await kraken.connections[0].send(FakeKraken.ticker_update("BTC/USD", "45000.00", now_iso()))
        await wait_for(lambda: kr_client.stats.accepted >= 3 and delivered(hub), what="Kraken's outlier price")
        assert hub.composite.books["BTC-USD"].published == 2
        health = health_of(hub)
        assert health["status"] == "no_composite" and "deviates" in health["reason"]
        assert names(health["excluded"]) == ["coinbase", "kraken"]
        _, text = await get_json(f"{running.url}/health")
        assert names(text["composite"]["BTC-USD"]["excluded"]) == ["coinbase", "kraken"]
        # PostgreSQL is asked only now: round trips before the outlier could age Coinbase's price past the window.
        await wait_for(lambda: hub.writer.persisted_id >= int(second.id), what="the composites to be written")
        replayed = await hub.store.ticks_after(int(first.id) - 1, int(second.id) + 1, ["BTC-USD"], 10)
        assert [t.json for t in replayed] == [first.data.encode(), second.data.encode()], "the same bytes"
        assert [price for price, _ in await stored_composites(settings)] == ["43000.10", "43000.175"]

        await kraken_stack.aclose()  # the Kraken venue stops
        await wait_for(lambda: "kraken" in names(health_of(hub)["stale"]), WINDOW + 5, "Kraken to go stale")
        await coinbase.connections[0].send(coinbase.ticker("BTC-USD", "43000.40", now_iso()))
        third = await stream.next_event("tick")
        assert (orjson.loads(third.data)["price"], venues_of(third)) == ("43000.40", [("coinbase", "43000.40")])
        status, body = await get_json(f"{running.url}/instruments")
        assert status == 200 and body["window_s"] == WINDOW and body["max_deviation_pct"] == "1.0"
        btc = next(i for i in body["instruments"] if i["name"] == "BTC-USD")
        assert btc["status"] == "ok" and btc["quote"] == "USD" and btc["accept"] == ["USDT"]
        assert [(v["source"], v["state"], v["exclusions"]) for v in btc["venues"]] == [
            ("coinbase", "fresh", 1),
            ("kraken", "stale", 1),
        ]

        # Both stale: /health says why; a late tick (old source time) publishes nothing.
        await wait_for(lambda: health_of(hub)["stale"] and not health_of(hub)["fresh"], WINDOW + 5, "all stale")
        _, text = await get_json(f"{running.url}/health")
        assert text["composite"]["BTC-USD"]["status"] == "no_composite"
        assert "older than the window" in text["composite"]["BTC-USD"]["reason"]
        assert names(text["composite"]["BTC-USD"]["stale"]) == ["coinbase", "kraken"]
        accepted = cb_client.stats.accepted
        await coinbase.connections[0].send(coinbase.ticker("BTC-USD", "43000.50", now_iso(ago=60)))
        await wait_for(lambda: cb_client.stats.accepted > accepted and delivered(hub), what="the late Coinbase tick")
        book = hub.composite.books["BTC-USD"]
        assert book.published == 3 and book.skipped["all_stale"] >= 1
        async with aiohttp.ClientSession() as session, session.get(f"{running.url}/metrics") as response:
            scraped = await response.text()
        assert metric(scraped, "tickhub_composite_published_total", instrument="BTC-USD") == 3
        labels = {"instrument": "BTC-USD", "source": "kraken", "symbol": "KRAKEN:BTC-USD"}
        assert metric(scraped, "tickhub_composite_outlier_exclusions_total", **labels) == 1
        assert metric(scraped, "tickhub_composite_skipped_total", instrument="BTC-USD", reason="all_outliers") == 1
        assert metric(scraped, "tickhub_composite_venues", instrument="BTC-USD", state="stale") == 2
    assert [price for price, _ in await stored_composites(settings)] == ["43000.10", "43000.175", "43000.40"]


async def composite_ticks(stream: SSEStream, n: int) -> list[SSEEvent]:
    return [await stream.next_event("tick") for _ in range(n)]


def two_mocks_settings(settings: Settings, *mocks: Any, **changes: Any) -> Settings:
    # Two random walks drift apart; a wide deviation keeps both venues in every composite.
    sources = tuple((m.feed.name, m.url) for m in mocks)
    return settings.replace(sources=sources, instruments="", composite_max_deviation=Decimal(50), **changes)


@pytest.mark.parametrize("ring_size", [65536, 16], ids=["ring", "postgresql"])
async def test_a_composite_subscriber_resumes_with_identical_ticks(settings: Settings, ring_size: int) -> None:
    async with (
        running_mock(("BTCUSD",), interval=0.005, name="mock-a", seed=1) as a,
        running_mock(("BTCUSD",), interval=0.005, name="mock-b", seed=2) as b,
        running_hub(two_mocks_settings(settings, a, b, ring_size=ring_size)) as running,
    ):
        hub = running.hub
        async with subscribe(running.url, "?symbols=BTC-USD") as witness:
            await witness.next_event("snapshot")
            async with subscribe(running.url, "?symbols=BTC-USD") as first:
                await first.next_event("snapshot")
                last = (await composite_ticks(first, 10))[-1].id
            if ring_size < 1000:
                await wait_for(lambda: hub.ring.first_id > int(last) + 50, what="the ring to move on")
            else:
                await wait_for(lambda: hub.market.last_id > int(last) + 100, what="more ticks")
            async with subscribe(running.url, "?symbols=BTC-USD", last_event_id=last) as resumed:
                replay = await composite_ticks(resumed, 40)
            reference = await composite_ticks(witness, 80)
    start = [e.id for e in reference].index(last) + 1
    assert [e.data for e in replay] == [e.data for e in reference[start : start + 40]], "byte for byte"
    assert all(len(venues_of(e)) == 2 for e in replay), "both mocks in every composite"


async def until_the_end(stream: SSEStream) -> list[SSEEvent]:
    """The tick events left on a stream the hub is closing."""
    events = []
    with contextlib.suppress(EOFError):
        while True:
            event = await stream.next()
            if event.event == "tick":
                events.append(event)
    return events


async def test_composite_seq_grows_across_a_restart_and_replays_identically(settings: Settings) -> None:
    async with running_mock(("BTCUSD",), interval=0.005, name="mock-a", seed=1) as a:
        async with contextlib.AsyncExitStack() as streams, contextlib.AsyncExitStack() as hubs:
            first = await hubs.enter_async_context(running_hub(two_mocks_settings(settings, a)))
            stream = await streams.enter_async_context(subscribe(first.url, "?symbols=BTC-USD"))
            await stream.next_event("snapshot")
            before = await composite_ticks(stream, 20)
            await hubs.aclose()  # a graceful stop: the subscriber gets the rest, then the end
            before += await until_the_end(stream)
        # A hub on the same database with no source: it only remembers and replays.
        async with running_hub(two_mocks_settings(settings)) as second:
            assert await get_bytes(f"{second.url}/prices/BTC-USD") == before[-1].data.encode(), "as it was"
            async with subscribe(second.url, "?symbols=BTC-USD", last_event_id=before[9].id) as resumed:
                replayed = await composite_ticks(resumed, len(before) - 10)
        assert [e.data for e in replayed] == [e.data for e in before[10:]], "from PostgreSQL, byte for byte"
        async with (
            running_mock(("BTCUSD",), interval=0.005, name="mock-b", seed=2) as b,
            running_hub(two_mocks_settings(settings, a, b)) as third,
            subscribe(third.url, "?symbols=BTC-USD") as stream,
        ):
            await stream.next_event("snapshot")
            after = await composite_ticks(stream, 1)
            while {s for s, _ in venues_of(after[-1])} != {"mock-a", "mock-b"}:  # till both are connected
                after += await composite_ticks(stream, 1)
    seqs = [orjson.loads(e.data)["seq"] for e in before + after]
    assert seqs == sorted(set(seqs)), "composite seqs strictly increase across restarts"
