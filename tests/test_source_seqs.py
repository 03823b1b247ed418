"""A source's seqs and symbols that would silence it or speak for the hub: a seq far ahead of any clock,
a source whose seqs went back (restarted on a clock that is behind), a symbol that is an instrument's."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import orjson
from aiohttp import web
from helpers import get_json, running_hub, start_site, wait_for, written

from tickhub.config import Settings
from tickhub.wire import format_ts

DAY_US = 86_400 * 10**6


def tick_frame(seq: int, symbol: str = "HX", price: str = "10.00") -> bytes:
    data = orjson.dumps({"symbol": symbol, "price": price, "ts": format_ts(datetime.now(UTC)), "seq": seq})
    return b"id: %d\nevent: tick\ndata: %b\n\n" % (seq, data)


@contextlib.asynccontextmanager
async def source_by_connection(*connections: list[bytes]) -> AsyncIterator[str]:
    """A source that sends each connection its own frames (the last list for every later one), then
    heartbeats: a source that restarts between connections."""
    made = 0

    async def stream(request: web.Request) -> web.StreamResponse:
        nonlocal made
        frames = connections[min(made, len(connections) - 1)]
        last = made >= len(connections) - 1
        made += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            for frame in frames:
                await response.write(frame)
            while last:
                await asyncio.sleep(0.1)
                await response.write(b": ping\n\n")
        return response

    app = web.Application()
    app.router.add_get("/stream", stream)
    runner, port = await start_site(app)
    try:
        yield f"http://127.0.0.1:{port}/stream"
    finally:
        await runner.cleanup()


async def test_a_seq_far_ahead_of_the_clock_is_rejected_and_the_source_goes_on(settings: Settings) -> None:
    now_us = time.time_ns() // 1000
    frames = [tick_frame(now_us), tick_frame(9223372036854775000, price="1.00"), tick_frame(now_us + 1, price="11.00")]
    async with source_by_connection(frames) as url, running_hub(settings.replace(sources=(("s", url),))) as hub:
        await wait_for(lambda: hub.hub.sequencer.last_seq("s") == now_us + 1, what="the tick after the bad one")
        stats = hub.hub.ingest.clients["s"].stats
        assert stats.rejects == {"seq_ahead": 1} and stats.accepted == 2
        await wait_for(lambda: written(hub.hub), what="the writer")
        _, price = await get_json(f"{hub.url}/prices/HX")
    assert price["price"] == "11.00"


async def test_a_source_whose_seqs_went_back_is_reported_not_silently_dropped(settings: Settings) -> None:
    now_us = time.time_ns() // 1000
    first = [tick_frame(now_us + n) for n in range(1, 4)]  # the source's first run, then it restarts ...
    behind = [tick_frame(now_us - 60 * 10**6 + n) for n in range(1, 30)]  # ... on a clock a minute behind
    hub_settings = settings.replace(source_stale_timeout=0.5)
    async with (
        source_by_connection(first, behind) as url,
        running_hub(hub_settings.replace(sources=(("s", url),))) as hub,
    ):
        stats = hub.hub.ingest.clients["s"].stats
        await wait_for(lambda: stats.state == "behind", what="the source reported behind")
        _, health = await get_json(f"{hub.url}/health")
    source = health["sources"]["s"]
    assert health["status"] == "degraded" and source["state"] == "behind"
    assert source["accepted"] == 3 and source["duplicates"] >= 29
    assert "at or below" in source["last_error"]


async def test_a_source_cannot_publish_an_instrument_s_symbol(settings: Settings, tmp_path: Path) -> None:
    instruments = tmp_path / "instruments.toml"
    instruments.write_text('[instruments.BTC-USD]\nquote = "USD"\nvenues = [{ symbol = "BTCUSD", quote = "USD" }]\n')
    frames = [
        tick_frame(1, "BTCUSD", "43000.00"),
        tick_frame(2, "BTC-USD", "1.00"),
        tick_frame(3, "BTCUSD", "43001.00"),
    ]
    hub_settings = settings.replace(instruments=str(instruments), composite_max_deviation=Decimal(100))
    async with source_by_connection(frames) as url, running_hub(hub_settings.replace(sources=(("evil", url),))) as hub:
        await wait_for(lambda: hub.hub.sequencer.last_seq("evil") == 3, what="the last tick")
        await wait_for(lambda: written(hub.hub), what="the writer")
        stats = hub.hub.ingest.clients["evil"].stats
        _, symbols = await get_json(f"{hub.url}/symbols")
    assert stats.rejects == {"reserved_symbol": 1}
    btc = next(s for s in symbols["symbols"] if s["symbol"] == "BTC-USD")
    assert btc["sources"] == ["composite"] and btc["price"] != "1.00"
