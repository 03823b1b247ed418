"""GET /stream over real sockets: snapshot, ordering, filters, resume from ring and PostgreSQL, resync."""

from __future__ import annotations

import orjson
from helpers import get_json, running_hub, running_mock, subscribe, wait_for

from tickhub.config import Settings


async def test_new_subscriber_gets_snapshot_then_ticks_with_consecutive_ids(settings: Settings) -> None:
    async with (
        running_mock(("BTCUSD", "META")) as source,
        running_hub(settings.replace(sources=(("mock", source.url),))) as hub,
    ):
        await wait_for(lambda: len(hub.hub.market.latest) == 2, what="both symbols")
        async with subscribe(hub.url) as stream:
            assert stream.parser.retry is None
            snapshot = await stream.next()
            assert snapshot.event == "snapshot"
            assert stream.parser.retry == settings.retry_ms
            ticks = orjson.loads(snapshot.data)["ticks"]
            assert {t["symbol"] for t in ticks} == {"BTCUSD", "META"}
            assert snapshot.id == max((t["id"] for t in ticks), key=int)
            live = await stream.ticks(200)
        ids = [int(t["id"]) for t in live]
        assert ids[0] == int(snapshot.id) + 1, "live ticks start right after the snapshot"
        assert ids == list(range(ids[0], ids[0] + len(ids))), "ids strictly increase with no gap"
        for tick in live:
            assert set(tick) == {"id", "source", "symbol", "price", "ts", "seq"}
            assert tick["source"] == "mock"


async def test_symbols_filter_and_its_snapshot(settings: Settings) -> None:
    async with (
        running_mock(("BTCUSD", "META", "TCSG")) as source,
        running_hub(settings.replace(sources=(("mock", source.url),))) as hub,
    ):
        await wait_for(lambda: len(hub.hub.market.latest) == 3, what="three symbols")
        async with subscribe(hub.url, "?symbols=meta,TCSG") as stream:
            snapshot = await stream.next_event("snapshot")
            assert {t["symbol"] for t in orjson.loads(snapshot.data)["ticks"]} == {"META", "TCSG"}
            ticks = await stream.ticks(60)
        assert {t["symbol"] for t in ticks} == {"META", "TCSG"}
        ids = [int(t["id"]) for t in ticks]
        assert ids == sorted(set(ids))


async def test_reconnect_with_last_event_id_gets_exactly_the_missed_ticks(settings: Settings) -> None:
    async with (
        running_mock(("BTCUSD", "META")) as source,
        running_hub(settings.replace(sources=(("mock", source.url),))) as hub,
    ):
        async with subscribe(hub.url) as witness:
            await witness.next_event("snapshot")
            async with subscribe(hub.url) as first:
                await first.next_event("snapshot")
                seen = await first.ticks(30)
            last = seen[-1]["id"]
            await wait_for(lambda: hub.hub.market.last_id >= int(last) + 50, what="50 more ticks")
            async with subscribe(hub.url, last_event_id=last) as resumed:
                replay = await resumed.ticks(150)
            reference = await witness.ticks(300)
        by_id = [t["id"] for t in reference]
        start = by_id.index(last) + 1
        assert [t["id"] for t in replay] == by_id[start : start + 150]
        assert replay == reference[start : start + 150]


async def test_resume_from_postgresql_when_the_ring_no_longer_holds_the_ticks(settings: Settings) -> None:
    async with (
        running_mock(("BTCUSD",), interval=0.002) as source,
        running_hub(settings.replace(sources=(("mock", source.url),), ring_size=32)) as hub,
    ):
        async with subscribe(hub.url) as first:
            await first.next_event("snapshot")
            seen = await first.ticks(5)
        last = int(seen[-1]["id"])
        await wait_for(lambda: hub.hub.ring.first_id > last + 100, what="the ring to move on by 100 ticks")
        async with subscribe(hub.url, f"?last_event_id={last}") as resumed:
            replay = await resumed.ticks(400)
    ids = [int(t["id"]) for t in replay]
    assert ids == list(range(last + 1, last + 401)), "replayed from PostgreSQL into the ring with no gap or twin"
    seqs = [t["seq"] for t in replay]
    assert seqs == list(range(seqs[0], seqs[0] + 400))


async def test_unknown_last_event_id_gets_resync_then_snapshot(settings: Settings) -> None:
    async with (
        running_mock(("BTCUSD",)) as source,
        running_hub(settings.replace(sources=(("mock", source.url),))) as hub,
    ):
        await wait_for(lambda: hub.hub.market.last_id, what="a first tick")
        future = str(hub.hub.market.last_id + 10**6)
        for bad in ("not-an-id", future, "-5", "1" * 30):
            async with subscribe(hub.url, last_event_id=bad) as stream:
                resync = await stream.next()
                assert resync.event == "resync"
                assert orjson.loads(resync.data) == {"reason": "unknown_id", "last_event_id": bad}
                snapshot = await stream.next()
                assert snapshot.event == "snapshot" and snapshot.id
                (tick,) = await stream.ticks(1)
                assert int(tick["id"]) > int(snapshot.id)


async def test_id_older_than_the_replay_limit_gets_resync(settings: Settings) -> None:
    async with (
        running_mock(("BTCUSD",), interval=0.002) as source,
        running_hub(settings.replace(sources=(("mock", source.url),), ring_size=16, replay_limit=50)) as hub,
    ):
        await wait_for(lambda: hub.hub.market.last_id, what="a first tick")
        first = hub.hub.market.last_id
        await wait_for(lambda: hub.hub.writer.persisted_id > first + 200, what="200 ticks persisted")
        async with subscribe(hub.url, last_event_id=str(first)) as stream:
            resync = await stream.next()
            assert resync.event == "resync"
            assert orjson.loads(resync.data)["reason"] == "too_old"
            assert (await stream.next()).event == "snapshot"


async def test_heartbeats_keep_a_quiet_stream_alive(settings: Settings) -> None:
    async with (
        running_mock(("BTCUSD",), limit=3) as source,
        running_hub(settings.replace(sources=(("mock", source.url),), heartbeat=0.2)) as hub,
    ):
        async with subscribe(hub.url) as stream:
            await stream.next_event("snapshot")
            await stream.wait_comments(3, timeout=10)


async def test_bad_symbols_parameter_is_a_400_json_error(settings: Settings) -> None:
    async with running_hub(settings.replace(max_symbols=3)) as hub:
        status, body = await get_json(f"{hub.url}/stream?symbols=BTC$USD")
        assert status == 400 and body["error"]["code"] == "bad_symbol"
        status, body = await get_json(f"{hub.url}/stream?symbols=A,B,C,D")
        assert status == 400 and body["error"]["code"] == "too_many_symbols"
