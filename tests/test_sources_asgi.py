"""The sources' SSE in process, with async-asgi-testclient: the mock's app (built from its command-line
flags) and an exchange bridge's, their lifespans and ``/stream`` driven through ASGI messages, no sockets
on the SSE side.

Each stream ends the way a client ends it, with ``http.disconnect``, and waits for the response to
finish; then the feed must have forgotten the consumer, so no task outlives its test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from async_asgi_testclient import TestClient
from helpers import wait_for
from starlette.applications import Starlette

from sources import mock
from sources.bridge import BridgeSettings, ExchangeBridge
from sources.coinbase import CoinbaseAdapter
from sources.exchange import Quote
from sources.feed import RETRY_MS, SourceFeed
from tickhub.wire import SSEEvent, SSEParser

CLOSED_WS = "ws://127.0.0.1:9"  # the discard port: refused at once, so the bridge stays "not connected"


def mock_app(*flags: str) -> Starlette:
    """The mock source's app exactly as ``tickhub source mock FLAGS`` builds it."""
    parser = argparse.ArgumentParser()
    mock.add_arguments(parser)
    return mock.build(parser.parse_args(["--symbols", "BTCUSD,META", "--seed", "1", *flags]))


class AsgiStream:
    """An SSE response read through ASGI messages."""

    def __init__(self, response: Any) -> None:
        self.response = response
        self.parser = SSEParser()
        self.pending: list[SSEEvent] = []
        self.chunks = response.iter_content(1 << 20)

    async def next(self, timeout: float = 10) -> SSEEvent:
        async with asyncio.timeout(timeout):
            while not self.pending:
                self.pending.extend(self.parser.feed(await anext(self.chunks)))
        return self.pending.pop(0)

    async def ticks(self, n: int) -> list[dict[str, Any]]:
        out = []
        while len(out) < n:
            event = await self.next()
            assert event.event == "tick" and event.id is not None, event
            tick = orjson.loads(event.data)
            assert str(tick["seq"]) == event.id, "the SSE id is the seq"
            out.append(tick)
        return out


@contextlib.asynccontextmanager
async def stream(
    client: TestClient, feed: SourceFeed, query: str = "", last_event_id: str | None = None
) -> AsyncIterator[AsgiStream]:
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    response = await client.get(f"/stream{query}", headers=headers, stream=True)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    reader = AsgiStream(response)
    try:
        yield reader
    finally:
        response.send({"type": "http.disconnect"})  # what a client closing the connection sends
        with contextlib.suppress(StopAsyncIteration, Exception):
            async with asyncio.timeout(5):
                async for _ in reader.chunks:  # until the response has ended
                    pass
        await wait_for(lambda: feed.consumers == 0, 5, "the feed to forget the consumer")


async def test_the_mock_sends_retry_then_numbered_events() -> None:
    app = mock_app("--interval", "0", "--limit", "500")
    async with TestClient(app, timeout=10) as client:
        feed: SourceFeed = app.state.feed
        async with stream(client, feed) as events:
            ticks = await events.ticks(500)
            assert events.parser.retry == RETRY_MS
    seqs = [t["seq"] for t in ticks]
    assert seqs == list(range(feed.first_seq, feed.first_seq + 500))
    assert {t["symbol"] for t in ticks} == {"BTCUSD", "META"} and {t["source"] for t in ticks} == {"mock"}


@pytest.mark.parametrize("how", ["header", "query"])
async def test_a_consumer_resumes_exactly_after_its_last_event_id(how: str) -> None:
    app = mock_app("--interval", "0", "--limit", "300")
    async with TestClient(app, timeout=10) as client:
        feed: SourceFeed = app.state.feed
        async with stream(client, feed) as events:  # the first consumer lets the producer run
            await events.ticks(300)
        last = feed.first_seq + 99
        resume = {"query": f"?last_event_id={last}"} if how == "query" else {"last_event_id": str(last)}
        async with stream(client, feed, **resume) as events:
            ticks = await events.ticks(200)
    assert [t["seq"] for t in ticks] == list(range(last + 1, last + 201))


async def test_an_id_older_than_the_ring_gets_all_it_holds_and_the_jump_shows() -> None:
    app = mock_app("--interval", "0", "--limit", "300", "--ring-size", "100")
    async with TestClient(app, timeout=10) as client:
        feed: SourceFeed = app.state.feed
        async with stream(client, feed) as events:
            await events.ticks(300)
        assert feed.oldest_seq == feed.next_seq - 100
        async with stream(client, feed, last_event_id=str(feed.first_seq + 10)) as events:
            ticks = await events.ticks(100)
    assert [t["seq"] for t in ticks] == list(range(feed.next_seq - 100, feed.next_seq))
    assert ticks[0]["seq"] > feed.first_seq + 11, "the consumer sees the gap in seq"


async def test_a_quiet_stream_has_heartbeats() -> None:
    app = mock_app("--interval", "0", "--limit", "3", "--heartbeat", "0.05")
    async with TestClient(app, timeout=10) as client:
        feed: SourceFeed = app.state.feed
        async with stream(client, feed) as events:
            await events.ticks(3)
            async with asyncio.timeout(5):  # comments carry no event: read on until three have arrived
                while events.parser.comments < 3:
                    events.pending.extend(events.parser.feed(await anext(events.chunks)))
            assert not events.pending, "nothing but heartbeats after the last tick"


async def test_a_consumer_that_leaves_a_fast_feed_is_forgotten() -> None:
    # At --interval 0 the producer publishes every turn of the loop: the stream must still notice the
    # disconnect (the feed forgets the consumer, in stream()) and the producer waits for a consumer.
    app = mock_app("--interval", "0", "--ring-size", "10000")
    async with TestClient(app, timeout=10) as client:
        feed: SourceFeed = app.state.feed
        async with stream(client, feed) as events:
            await events.ticks(5000)
        paused_at = feed.next_seq
        await wait_for(lambda: not feed._cursors, what="no consumer")
        assert feed.next_seq - paused_at <= mock.FAST_BATCH, "the producer waits once nobody reads"


async def test_head_answers_the_headers_without_opening_a_stream() -> None:
    app = mock_app("--interval", "0", "--limit", "10")
    async with TestClient(app, timeout=10) as client:
        response = await client.head("/stream")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        assert app.state.feed.consumers == 0 and app.state.feed.next_seq == app.state.feed.first_seq


async def test_the_info_route_tells_where_the_seqs_stand() -> None:
    app = mock_app("--interval", "0", "--limit", "10", "--name", "mock7")
    async with TestClient(app, timeout=10) as client:
        feed: SourceFeed = app.state.feed
        async with stream(client, feed) as events:
            await events.ticks(10)
        response = await client.get("/")
    assert response.status_code == 200
    info = response.json()
    assert info == {
        "name": "mock7",
        "first_seq": feed.first_seq,
        "next_seq": feed.first_seq + 10,
        "oldest_seq": feed.first_seq,
        "consumers": 0,
    }


@contextlib.asynccontextmanager
async def bridge_client() -> AsyncIterator[tuple[TestClient, ExchangeBridge]]:
    symbols = ("BTC-USD", "ETH-USD")
    settings = BridgeSettings(ws_url=CLOSED_WS, symbols=symbols, name="coinbase", connect_timeout=1.0)
    bridge = ExchangeBridge(CoinbaseAdapter(CLOSED_WS, symbols), settings)
    async with bridge, TestClient(bridge.app(), timeout=10) as client:
        yield client, bridge


def quote(symbol: str, price: str, trade_id: str) -> Quote:
    return Quote(f"COINBASE:{symbol}", price, "2024-01-02T03:04:05.000006Z", trade_id)


async def test_a_bridge_gives_a_new_consumer_the_newest_event_of_each_symbol_first() -> None:
    async with bridge_client() as (client, bridge):
        for symbol, price, trade_id in [
            ("BTC-USD", "42000.1", "1"),
            ("ETH-USD", "2200.5", "2"),
            ("BTC-USD", "42001", "3"),
        ]:
            assert bridge.publish(quote(symbol, price, trade_id))
        first = bridge.feed.first_seq
        async with stream(client, bridge.feed) as events:
            newest = await events.ticks(2)
            bridge.publish(quote("ETH-USD", "2201", "4"))
            [live] = await events.ticks(1)
        async with stream(client, bridge.feed, last_event_id=str(first)) as events:
            resumed = await events.ticks(3)
    # as published, with their own seqs, in seq order: nothing is published twice
    assert [(t["symbol"], t["price"], t["seq"]) for t in newest] == [
        ("COINBASE:ETH-USD", "2200.5", first + 1),
        ("COINBASE:BTC-USD", "42001", first + 2),
    ]
    assert (live["seq"], live["trade_id"]) == (first + 3, "4")
    assert [t["seq"] for t in resumed] == [first + 1, first + 2, first + 3], "a resume gets the ring, not the newest"


async def test_a_bridge_health_route_names_why_it_is_degraded() -> None:
    async with bridge_client() as (client, bridge):
        await wait_for(lambda: bridge.connections and bridge.connections[0].last_error, what="a refused connect")
        response = await client.get("/health")
        info = (await client.get("/")).json()
    assert response.status_code == 200
    body = response.json()
    assert body["source"] == "coinbase" and body["status"] == "degraded" and body["reason"]
    assert body["consumers"] == 0 and body["next_seq"] == bridge.feed.next_seq
    assert info["name"] == "coinbase"
