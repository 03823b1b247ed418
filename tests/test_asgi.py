"""The hub's routes in process, with async-asgi-testclient: no sockets, the app and its lifespan driven
through ASGI messages, against the real PostgreSQL. Ticks enter through the hub's own sequencer.

Each stream ends the way a client ends it, with ``http.disconnect``, and waits for the response to
finish, so no task outlives its test (the CancelledErrors other SSE suites met when run together).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from async_asgi_testclient import TestClient
from helpers import wait_for

from tickhub.app import create_app
from tickhub.config import Settings
from tickhub.hub import Hub
from tickhub.wire import SourceTick, SSEEvent, SSEParser, format_ts


@contextlib.asynccontextmanager
async def hub_client(settings: Settings) -> AsyncIterator[tuple[TestClient, Hub]]:
    """The hub app under async-asgi-testclient; lifespan started, ingest lease taken."""
    app = create_app(settings)
    async with TestClient(app, timeout=10) as client:
        hub: Hub = app.state.hub
        await wait_for(lambda: hub.sequencer is not None, what="the ingest lease")
        yield client, hub


def publish(hub: Hub, source: str, symbol: str, seqs: range) -> None:
    assert hub.sequencer is not None
    for seq in seqs:
        now = datetime.now(UTC)
        hub.sequencer.accept(source, SourceTick(symbol, f"{100 + seq % 50}.25", now, format_ts(now), seq))


class AsgiStream:
    """An SSE response read through ASGI messages."""

    def __init__(self, response: Any) -> None:
        self.response = response
        self.parser = SSEParser()
        self.pending: list[SSEEvent] = []
        self.chunks = response.iter_content(65536)

    async def next(self, timeout: float = 10) -> SSEEvent:
        async with asyncio.timeout(timeout):
            while not self.pending:
                self.pending.extend(self.parser.feed(await anext(self.chunks)))
        return self.pending.pop(0)

    async def ticks(self, n: int) -> list[dict[str, Any]]:
        out = []
        while len(out) < n:
            event = await self.next()
            assert event.event != "resync", event.data
            if event.event == "tick":
                out.append(orjson.loads(event.data))
        return out


@contextlib.asynccontextmanager
async def stream(client: TestClient, query: str = "", last_event_id: str | None = None) -> AsyncIterator[AsgiStream]:
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


async def test_a_subscriber_gets_retry_a_snapshot_and_then_every_tick(settings: Settings) -> None:
    async with hub_client(settings) as (client, hub):
        publish(hub, "src", "BTCUSD", range(1, 4))
        await wait_for(lambda: hub.market.last_id, what="delivery")
        async with stream(client, "?symbols=BTCUSD") as events:
            snapshot = await events.next()
            assert snapshot.event == "snapshot" and events.parser.retry == settings.retry_ms
            assert [t["seq"] for t in orjson.loads(snapshot.data)["ticks"]] == [3]
            publish(hub, "src", "BTCUSD", range(4, 9))
            publish(hub, "src", "META", range(9, 10))  # not asked for
            ticks = await events.ticks(5)
        assert [t["seq"] for t in ticks] == [4, 5, 6, 7, 8]
        assert [int(t["id"]) for t in ticks] == list(range(int(ticks[0]["id"]), int(ticks[0]["id"]) + 5))


@pytest.mark.parametrize("ring_size", [4096, 8], ids=["from the ring", "from postgresql"])
async def test_a_resume_by_last_event_id_is_exact(settings: Settings, ring_size: int) -> None:
    async with hub_client(settings.replace(ring_size=ring_size)) as (client, hub):
        publish(hub, "src", "BTCUSD", range(1, 101))
        await wait_for(lambda: hub.writer.persisted_id and hub.writer.persisted_id == hub.market.last_id, what="writes")
        first = hub.market.last_id - 99
        async with stream(client, last_event_id=str(first + 9)) as events:
            ticks = await events.ticks(90)
        assert [int(t["id"]) for t in ticks] == list(range(first + 10, first + 100))
        assert [t["seq"] for t in ticks] == list(range(11, 101))
        assert hub.replayed["postgres" if ring_size == 8 else "ring"] > 0


@pytest.mark.parametrize(
    ("last_event_id", "reason"),
    [("not-an-id", "unknown_id"), ("9" * 18, "unknown_id"), ("1" + "0" * 12, "too_old"), ("9" * 5000, "unknown_id")],
)
async def test_an_id_the_hub_cannot_resume_from_gets_resync_and_a_snapshot(
    settings: Settings, last_event_id: str, reason: str
) -> None:
    # A ring of 8: what it holds is replayed whatever its count; replay_limit bounds what PostgreSQL replays.
    async with hub_client(settings.replace(replay_limit=10, ring_size=8)) as (client, hub):
        publish(hub, "src", "BTCUSD", range(1, 31))
        await wait_for(lambda: hub.writer.persisted_id and hub.writer.persisted_id == hub.market.last_id, what="writes")
        async with stream(client, last_event_id=last_event_id) as events:
            resync, snapshot = await events.next(), await events.next()
    assert resync.event == "resync"
    body = orjson.loads(resync.data)
    assert body["reason"] == reason and len(body["last_event_id"]) <= 64
    assert snapshot.event == "snapshot" and orjson.loads(snapshot.data)["ticks"]


async def test_errors_are_json_with_a_fitting_status(settings: Settings) -> None:
    async with hub_client(settings.replace(max_symbols=2)) as (client, hub):
        publish(hub, "src", "BTCUSD", range(1, 2))
        await wait_for(lambda: hub.market.last_id, what="delivery")
        cases = [
            ("/stream?symbols=A,B,C", 400, "too_many_symbols"),
            ("/stream?symbols=bad%20symbol", 400, "bad_symbol"),
            ("/prices/NOPE", 404, "unknown_symbol"),
            ("/prices/BTCUSD/history?limit=0", 400, "bad_parameter"),
            ("/nowhere", 404, "not_found"),
            # str.upper() maps a long s to "S": a symbol is checked as ASCII before it is upper-cased
            ("/prices/btcu\u017fd", 404, "unknown_symbol"),
            ("/stream?symbols=btcu\u017fd", 400, "bad_symbol"),
        ]
        for path, status, code in cases:
            response = await client.get(path)
            assert response.status_code == status, path
            assert response.json()["error"]["code"] == code, path
        response = await client.post("/prices")
        assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"


async def test_rest_snapshots_health_and_metrics_in_process(settings: Settings) -> None:
    async with hub_client(settings) as (client, hub):
        publish(hub, "src", "BTCUSD", range(1, 3))
        publish(hub, "src", "META", range(3, 4))
        await wait_for(lambda: hub.writer.persisted_id and hub.writer.persisted_id == hub.market.last_id, what="writes")
        prices = (await client.get("/prices")).json()["prices"]
        assert [(p["symbol"], p["seq"]) for p in prices] == [("BTCUSD", 2), ("META", 3)]
        history = (await client.get("/prices/BTCUSD/history")).json()["ticks"]
        assert [t["seq"] for t in history] == [1, 2]
        health = (await client.get("/health")).json()
        assert health["status"] == "ok" and health["role"] == "ingesting"
        metrics = await client.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain") and b"tickhub_deliveries" in metrics.content
