"""REST routes over a real socket: prices, symbols, history, health, and JSON errors."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import aiohttp
import orjson
from helpers import get_json, running_hub, scripted_source, wait_for, written

from tickhub.config import Settings


def tick_event(seq: int, symbol: str, price: str, ts: str) -> bytes:
    data = {"symbol": symbol, "price": price, "ts": ts, "seq": seq}
    return b"id: %d\nevent: tick\ndata: %b\n\n" % (seq, orjson.dumps(data))


KNOWN = [
    tick_event(1, "BTCUSD", "43000.10000000", "2026-11-23T10:00:00Z"),
    tick_event(2, "META", "480.5", "2026-11-23T10:00:01Z"),
    tick_event(3, "BTCUSD", "43001.20", "2026-11-23T10:00:02Z"),
    tick_event(4, "BTCUSD", "0.00000001", "2026-11-23T10:00:03Z"),
    tick_event(5, "BTCUSD", "43003.00", "2026-11-23T10:00:04Z"),
]


async def test_prices_symbols_and_history_from_known_ticks(settings: Settings) -> None:
    async with scripted_source(KNOWN) as (url, _), running_hub(settings.replace(sources=(("venue", url),))) as hub:
        await wait_for(lambda: hub.hub.sequencer.last_seq("venue") == 5, what="the ticks")
        await wait_for(lambda: written(hub.hub), what="the writer")
        base = hub.url

        status, body = await get_json(f"{base}/prices")
        assert status == 200
        assert [(p["symbol"], p["price"]) for p in body["prices"]] == [("BTCUSD", "43003.00"), ("META", "480.5")]

        status, body = await get_json(f"{base}/prices/meta")
        assert status == 200 and body["price"] == "480.5" and body["source"] == "venue" and body["seq"] == 2

        status, body = await get_json(f"{base}/symbols")
        assert [(s["symbol"], s["sources"], s["price"]) for s in body["symbols"]] == [
            ("BTCUSD", ["venue"], "43003.00"),
            ("META", ["venue"], "480.5"),
        ]

        status, body = await get_json(f"{base}/prices/BTCUSD/history")
        assert status == 200
        assert [t["price"] for t in body["ticks"]] == ["43000.10000000", "43001.20", "0.00000001", "43003.00"]

        status, body = await get_json(f"{base}/prices/BTCUSD/history?limit=2")
        assert [t["seq"] for t in body["ticks"]] == [4, 5], "without since: the newest, oldest first"

        status, body = await get_json(f"{base}/prices/BTCUSD/history?since=2026-11-23T10:00:01Z&limit=2")
        assert [t["seq"] for t in body["ticks"]] == [3, 4], "with since: the first after it"

        until = int(datetime(2026, 11, 23, 10, 0, 3, tzinfo=UTC).timestamp())
        status, body = await get_json(f"{base}/prices/BTCUSD/history?since=2026-11-23T10:00:00&until={until}")
        assert [t["seq"] for t in body["ticks"]] == [1, 3], "until is exclusive; Unix seconds accepted"

        status, body = await get_json(f"{base}/prices/BTCUSD/history?limit=999999999")
        assert status == 200 and len(body["ticks"]) == 4, "limit is capped, not refused"


async def test_errors_are_json_with_a_fitting_status(settings: Settings) -> None:
    async with scripted_source(KNOWN[:1]) as (url, _), running_hub(settings.replace(sources=(("venue", url),))) as hub:
        await wait_for(lambda: hub.hub.market.last_id, what="a tick")
        cases = [
            ("/prices/NOPE", 404, "unknown_symbol"),
            ("/prices/NOPE/history", 404, "unknown_symbol"),
            ("/prices/BTCUSD/history?limit=0", 400, "bad_parameter"),
            ("/prices/BTCUSD/history?limit=-1", 400, "bad_parameter"),
            ("/prices/BTCUSD/history?limit=ten", 400, "bad_parameter"),
            ("/prices/BTCUSD/history?since=yesterday", 400, "bad_parameter"),
            ("/prices/BTCUSD/history?until=2026-13-45", 400, "bad_parameter"),
            ("/prices/BTCUSD/history?since=2026-11-24&until=2026-11-23", 400, "bad_parameter"),
            ("/prices/BTCUSD/history?since=99999999999999999999", 400, "bad_parameter"),
            ("/prices/x'%3B%20DROP%20TABLE%20ticks%3B--", 404, "unknown_symbol"),
            ("/no/such/route", 404, "not_found"),
        ]
        for path, status, code in cases:
            got_status, body = await get_json(hub.url + path)
            assert (got_status, body["error"]["code"]) == (status, code), path
            assert body["error"]["message"]
        async with aiohttp.ClientSession() as session, session.post(f"{hub.url}/prices") as response:
            assert response.status == 405
            assert (await response.json())["error"]["code"] == "method_not_allowed"


async def test_ping_and_health(settings: Settings) -> None:
    async with scripted_source(KNOWN[:2]) as (url, _), running_hub(settings.replace(sources=(("venue", url),))) as hub:
        status, body = await get_json(f"{hub.url}/ping")
        assert (status, body) == (200, {"pong": True})
        await wait_for(lambda: hub.hub.writer.written >= 2, what="the writer")
        status, health = await get_json(f"{hub.url}/health")
        assert status == 200 and health["status"] == "ok"
        venue = health["sources"]["venue"]
        assert venue["state"] == "connected" and venue["accepted"] == 2 and venue["last_seq"] == 2
        assert venue["lag_ms"] is not None
        assert health["writer"]["written"] == 2 and health["writer"]["backlog"] == 0
        assert health["stream"]["subscribers"] == 0


async def test_times_at_the_ends_of_the_calendar_and_huge_integers_are_answered(settings: Settings) -> None:
    async with scripted_source(KNOWN) as (url, _), running_hub(settings.replace(sources=(("venue", url),))) as hub:
        await wait_for(lambda: hub.hub.sequencer.last_seq("venue") == 5, what="the ticks")
        await wait_for(lambda: written(hub.hub), what="the writer")
        key = await hub.hub.accounts.create("alice", Decimal(1))
        auth = {"Authorization": f"Bearer {key}"}
        huge = "9" * 5000
        refused = [
            "/prices/BTCUSD/history?since=0001-01-01T00:00:00%2B01:00",  # year 0 in UTC
            "/prices/BTCUSD/history?until=9999-12-31T23:59:59-01:00",  # year 10000 in UTC
            "/prices/BTCUSD/candles?since=0001-01-01T00:00:00%2B01:00",
            "/prices/BTCUSD/candles?interval=1h&until=9999-12-31T23:59:59-01:00",
            "/prices/BTCUSD/history?since=1e400",
            "/prices/BTCUSD/history?since=%D9%A1%D9%A2",  # Arabic-Indic digits
            "/prices/BTCUSD/history?since=1700000000%0A",
            f"/prices/BTCUSD/history?since={huge}",
            f"/prices/BTCUSD/history?limit={huge}",
            f"/prices/BTCUSD/candles?limit={huge}",
            f"/orders?limit={huge}",
            f"/orders?before={huge}",
            f"/tasks/results?limit={huge}",
            f"/tasks/results?offset={huge}",
            f"/tasks/{huge}",
            f"/tasks/{2**63}",
            f"/orders/{huge}",
        ]
        for path in refused:
            status, body = await get_json(hub.url + path, headers=auth)
            assert (status, body["error"]["code"]) == (400, "bad_parameter"), path
        for path in (
            "/prices/BTCUSD/candles?interval=1h&until=0001-01-01T00:00:00",  # nothing before year 1
            "/prices/BTCUSD/candles?interval=1s&until=0001-01-01T00:00:01&limit=1000",
            "/prices/BTCUSD/candles?interval=1h&since=9999-12-31T23:00:00",  # after now: nothing yet
            "/prices/BTCUSD/history?since=0001-01-01T00:00:00%2B00:00&until=0001-01-01T00:00:01Z",
            "/prices/BTCUSD/history?since=9999-12-31T23:59:59.999999Z",
            "/prices/BTCUSD/history?until=0001-01-01T00:00:00-00:00",
            "/prices/BTCUSD/candles?since=0001-01-01T00:00:00&until=0001-01-02T00:00:00",
            "/prices/BTCUSD/candles?since=9999-12-30T00:00:00&until=9999-12-31T23:59:59.999999%2B00:00",
        ):
            status, body = await get_json(hub.url + path)
            assert status == 200, (path, body)
            assert body.get("ticks", body.get("candles")) == [], path
        status, body = await get_json(f"{hub.url}/prices/BTCUSD/history?since=0001-01-01T01:00:00%2B01:00")
        assert status == 200 and len(body["ticks"]) == 4, "from the first instant of year 1: everything"
        status, body = await get_json(f"{hub.url}/tasks/{2**63 - 1}")
        assert (status, body["error"]["code"]) == (404, "unknown_task"), "an unknown id in range stays 404"


async def test_history_pages_through_ticks_that_share_a_timestamp(settings: Settings) -> None:
    """Trade times tie (milliseconds, or one burst): ``since`` alone cannot page past a tie; ``after_id``,
    the last tick's id, can."""
    same = "2026-12-02T10:00:00.000000Z"
    frames = [tick_event(seq, "TIE", f"{seq}.00", same) for seq in range(1, 31)]
    async with scripted_source(frames) as (url, _), running_hub(settings.replace(sources=(("venue", url),))) as hub:
        await wait_for(lambda: hub.hub.sequencer.last_seq("venue") == 30, what="the ticks")
        await wait_for(lambda: written(hub.hub), what="the writer")
        pages, after = [], None
        for _ in range(5):  # three pages, then an empty one; more is a loop that never ends
            query = f"limit=10&after_id={after}" if after else f"limit=10&since={same}"
            status, body = await get_json(f"{hub.url}/prices/TIE/history?{query}")
            assert status == 200, body
            if not body["ticks"]:
                break
            pages.append([t["seq"] for t in body["ticks"]])
            after = body["ticks"][-1]["id"]
        status, body = await get_json(f"{hub.url}/prices/TIE/history?after_id=123&since={same}")
        assert status == 400 and body["error"]["code"] == "bad_parameter"
        status, body = await get_json(f"{hub.url}/prices/TIE/history?after_id=99")
        assert status == 400 and body["error"]["code"] == "bad_parameter"
    assert pages == [list(range(1, 11)), list(range(11, 21)), list(range(21, 31))]
