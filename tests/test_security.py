"""Security: no key or price in logs at INFO, CORS same-origin by default, hostile input stays data."""

from __future__ import annotations

import logging
from decimal import Decimal
from urllib.parse import quote

import aiohttp
import orjson
import pytest
from helpers import running_hub, scripted_source, wait_for

from tickhub.accounts import split_key
from tickhub.config import Settings

PRICE = "12345.67"
BAD_PRICE = "-98765.43"


def tick_event(seq: int, price: str, symbol: str = "BTCUSD") -> bytes:
    data = {"symbol": symbol, "price": price, "ts": "2026-11-23T10:00:00Z", "seq": seq}
    return b"id: %d\nevent: tick\ndata: %b\n\n" % (seq, orjson.dumps(data))


async def test_no_key_or_price_reaches_the_logs_at_info(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    frames = [tick_event(1, PRICE), tick_event(2, BAD_PRICE), b"data: {" + PRICE.encode() + b"\n\n"]
    async with (
        scripted_source(frames) as (url, _),
        running_hub(settings.replace(sources=(("v", url),))) as hub,
        aiohttp.ClientSession() as session,
    ):
        await wait_for(lambda: hub.hub.market.latest.get("BTCUSD"), what="the price")
        key = await hub.hub.accounts.create("alice", Decimal(10**6))
        for auth in (key, key + "x", "th_0123456789abcdef_" + "s" * 40):
            headers = {"Authorization": f"Bearer {auth}"}
            async with session.post(
                f"{hub.url}/orders", headers=headers, json={"symbol": "BTCUSD", "side": "buy", "qty": 1}
            ) as response:
                await response.read()
            async with session.get(f"{hub.url}/accounts/me", headers=headers) as response:
                await response.read()
    text = "\n".join(f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.INFO)
    assert caplog.records, "the hub logged something at all"
    secret = split_key(key)[1]
    for needle in (key, secret, PRICE, BAD_PRICE, "98765"):
        assert needle not in text, f"{needle!r} appeared in the logs"


async def test_cors_is_same_origin_unless_configured(settings: Settings) -> None:
    preflight = {
        "Origin": "https://evil.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    async with running_hub(settings) as hub, aiohttp.ClientSession() as session:
        async with session.get(f"{hub.url}/prices", headers={"Origin": "https://evil.example"}) as response:
            assert "Access-Control-Allow-Origin" not in response.headers
        async with session.options(f"{hub.url}/orders", headers=preflight) as response:
            assert "Access-Control-Allow-Origin" not in response.headers
    allowed = settings.replace(cors_origins=("https://dash.example",))
    async with running_hub(allowed) as hub, aiohttp.ClientSession() as session:
        async with session.options(f"{hub.url}/orders", headers={**preflight, "Origin": "https://dash.example"}) as r:
            assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == "https://dash.example"
        async with session.options(f"{hub.url}/orders", headers=preflight) as response:
            assert response.status == 400 and "Access-Control-Allow-Origin" not in response.headers
        async with session.get(f"{hub.url}/prices", headers={"Origin": "https://dash.example"}) as response:
            assert response.headers["Access-Control-Allow-Origin"] == "https://dash.example"
        async with session.get(f"{hub.url}/stream", headers={"Origin": "https://dash.example"}) as response:
            assert response.status == 200, "a dashboard on another origin can follow the stream"
            assert response.headers["Access-Control-Allow-Origin"] == "https://dash.example"


HOSTILE = ["BTC'; DROP TABLE ticks;--", "META%' OR '1'='1", "x\\y", "☃", "A" * 300, "../../etc/passwd", "\u0000"]


async def test_hostile_symbols_are_refused_or_treated_as_data(settings: Settings) -> None:
    async with (
        scripted_source([tick_event(1, PRICE)]) as (url, _),
        running_hub(settings.replace(sources=(("v", url),))) as hub,
        aiohttp.ClientSession() as session,
    ):
        await wait_for(lambda: hub.hub.writer.written == 1, what="a stored tick")
        key = await hub.hub.accounts.create("alice", Decimal(10**6))
        for symbol in HOSTILE:
            path = quote(symbol, safe="")
            for url_path in (
                f"/prices/{path}",
                f"/prices/{path}/history",
                f"/prices/{path}/candles",
                f"/stream?symbols={path}",
                f"/prices/BTCUSD/history?since={path}",
            ):
                async with session.get(hub.url + url_path) as response:
                    assert 400 <= response.status < 500, (url_path, response.status)
                    assert "error" in await response.json()
            async with session.post(
                f"{hub.url}/orders",
                headers={"Authorization": f"Bearer {key}"},
                json={"symbol": symbol, "side": "buy", "qty": 1},
            ) as response:
                assert response.status == 400
        assert await hub.hub.store.pool.fetchval("SELECT count(*) FROM ticks") == 1, "the table is intact"
