"""Candles from known ticks, the OpenAPI document and /docs, and /metrics counters that move."""

from __future__ import annotations

import re

import aiohttp
import orjson
from helpers import get_json, running_hub, running_mock, scripted_source, subscribe, wait_for
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Mount, Route

from tickhub.config import Settings
from tickhub.openapi import build_openapi
from tickhub.routes import ROUTES


def tick_event(seq: int, price: str, ts: str, symbol: str = "BTCUSD") -> bytes:
    data = {"symbol": symbol, "price": price, "ts": ts, "seq": seq}
    return b"id: %d\nevent: tick\ndata: %b\n\n" % (seq, orjson.dumps(data))


KNOWN = [
    tick_event(1, "100.00", "2026-11-23T10:00:00.100Z"),
    tick_event(2, "105.50", "2026-11-23T10:00:00.500Z"),
    tick_event(3, "99.25", "2026-11-23T10:00:00.900Z"),
    tick_event(4, "101.00", "2026-11-23T10:00:01.200Z"),
    tick_event(5, "102.00", "2026-11-23T10:01:30Z"),
    tick_event(6, "50.00", "2026-11-23T10:01:30Z", "META"),
]
RANGE = "since=2026-11-23T10:00:00Z&until=2026-11-23T10:05:00Z"


async def test_candles_from_known_ticks(settings: Settings) -> None:
    async with scripted_source(KNOWN) as (url, _), running_hub(settings.replace(sources=(("v", url),))) as hub:
        await wait_for(lambda: hub.hub.writer.written == 6, what="the ticks to be persisted")
        status, body = await get_json(f"{hub.url}/prices/BTCUSD/candles?interval=1s&{RANGE}")
        assert status == 200 and body["interval"] == "1s"
        assert body["candles"] == [
            {
                "start": "2026-11-23T10:00:00.000000Z",
                "open": "100.00",
                "high": "105.50",
                "low": "99.25",
                "close": "99.25",
                "count": 3,
                "volume": None,
                "trades": 0,
                "vwap": None,
            },
            {
                "start": "2026-11-23T10:00:01.000000Z",
                "open": "101.00",
                "high": "101.00",
                "low": "101.00",
                "close": "101.00",
                "count": 1,
                "volume": None,
                "trades": 0,
                "vwap": None,
            },
            {
                "start": "2026-11-23T10:01:30.000000Z",
                "open": "102.00",
                "high": "102.00",
                "low": "102.00",
                "close": "102.00",
                "count": 1,
                "volume": None,
                "trades": 0,
                "vwap": None,
            },
        ]
        status, body = await get_json(f"{hub.url}/prices/BTCUSD/candles?interval=1m&{RANGE}")
        assert [(c["start"], c["open"], c["high"], c["low"], c["close"], c["count"]) for c in body["candles"]] == [
            ("2026-11-23T10:00:00.000000Z", "100.00", "105.50", "99.25", "101.00", 4),
            ("2026-11-23T10:01:00.000000Z", "102.00", "102.00", "102.00", "102.00", 1),
        ]
        status, body = await get_json(f"{hub.url}/prices/BTCUSD/candles?interval=5m&{RANGE}&limit=1")
        assert [c["count"] for c in body["candles"]] == [5]
        status, body = await get_json(f"{hub.url}/prices/BTCUSD/candles?interval=1s&{RANGE}&limit=2")
        assert [c["start"][11:19] for c in body["candles"]] == ["10:00:01", "10:01:30"], "the newest buckets"
        for query, code in (
            ("interval=2m", "bad_parameter"),
            ("interval=1s&since=later", "bad_parameter"),
            ("interval=1s&limit=0", "bad_parameter"),
        ):
            status, body = await get_json(f"{hub.url}/prices/BTCUSD/candles?{query}")
            assert (status, body["error"]["code"]) == (400, code)
        status, body = await get_json(f"{hub.url}/prices/NOPE/candles")
        assert status == 404


def test_openapi_document_is_valid_and_names_every_route() -> None:
    spec = build_openapi()
    validate(spec)
    for route in ROUTES:
        if isinstance(route, Mount):
            continue
        assert isinstance(route, Route)
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        assert path in spec["paths"], f"{path} is not documented"
        documented = {m.upper() for m in spec["paths"][path]}
        assert set(route.methods or ()) - {"HEAD"} <= documented, path


async def test_openapi_and_docs_are_served_without_a_cdn(settings: Settings) -> None:
    async with running_hub(settings) as hub, aiohttp.ClientSession() as session:
        status, spec = await get_json(f"{hub.url}/openapi.json")
        assert status == 200 and spec["openapi"].startswith("3.")
        async with session.get(f"{hub.url}/docs") as response:
            page = await response.text()
        assert response.status == 200 and "swagger" in page.lower()
        assets = re.findall(r'(?:src|href)="([^"]+)"', page)
        assert assets and all(a.startswith("/") for a in assets), "everything comes from the hub itself"
        for asset in assets:
            async with session.get(hub.url + asset) as response:
                assert response.status == 200, asset
        async with session.get(f"{hub.url}/") as response:
            page = await response.text()
        assert response.status == 200 and "EventSource" not in page and "/static/dashboard.js" in page
        for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page):
            async with session.get(hub.url + asset) as response:
                assert response.status == 200, asset


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise AssertionError(f"{name}{labels} missing")


async def test_metrics_counts_move(settings: Settings) -> None:
    frames = [tick_event(i, f"{100 + i}.00", "2026-11-23T10:00:00Z") for i in range(1, 11)]
    frames.insert(3, b"id: 99\nevent: tick\ndata: {not json\n\n")
    async with (
        scripted_source(frames) as (url, _),
        running_hub(settings.replace(sources=(("v", url),))) as hub,
        aiohttp.ClientSession() as session,
    ):

        async def scrape() -> str:
            async with session.get(f"{hub.url}/metrics") as response:
                assert response.status == 200 and response.content_type == "text/plain"
                return await response.text()

        await wait_for(lambda: hub.hub.writer.written == 10, what="the ticks")
        text = await scrape()
        assert metric(text, "tickhub_source_events_total", source="v", outcome="accepted") == 10
        assert metric(text, "tickhub_source_rejects_total", source="v", reason="bad_json") == 1
        assert metric(text, "tickhub_source_up", source="v") == 1
        assert metric(text, "tickhub_writer_written_total") == 10
        assert metric(text, "tickhub_writer_batch_size_count") >= 1
        assert metric(text, "tickhub_writer_batch_seconds_count") >= 1
        assert metric(text, "tickhub_subscribers") == 0
        assert metric(text, "tickhub_ingesting") == 1 and metric(text, "tickhub_lease_gained_total") == 1
        assert metric(text, "tickhub_broker_claimed_total") == 0 and metric(text, "tickhub_broker_gaps_total") == 0
        deliveries = metric(text, "tickhub_deliveries_total")
        async with subscribe(hub.url) as stream:
            await stream.next_event("snapshot")
            await wait_for(lambda: hub.hub.fanout.count == 1, what="the subscriber")
            assert metric(await scrape(), "tickhub_subscribers") == 1
        assert metric(await scrape(), "tickhub_deliveries_total") == deliveries, "nothing new to deliver"


async def test_delivery_metrics_follow_the_stream(settings: Settings) -> None:
    async with (
        running_mock(("BTCUSD",), interval=0.005) as source,
        running_hub(settings.replace(sources=(("mock", source.url),))) as hub,
        aiohttp.ClientSession() as session,
    ):
        async with subscribe(hub.url) as first, subscribe(hub.url) as second:
            await first.next_event("snapshot")
            await second.next_event("snapshot")
            got = await first.ticks(30)
            await second.ticks(30)
        async with session.get(f"{hub.url}/metrics") as response:
            text = await response.text()
    assert metric(text, "tickhub_ticks_published_total") >= int(got[-1]["id"]) % 10**12
    assert metric(text, "tickhub_deliveries_total") >= 60, "30 ticks to each of two subscribers"
    assert metric(text, "tickhub_stream_writes_total") >= 2
    assert metric(text, "tickhub_stream_bytes_total") > 0
