"""Scale-out: hub replicas sharing a Redis Stream on loopback (the machine's Redis), one PostgreSQL.

In-process replicas for ordering; replica processes for the kill -9 cases. Each check looks at ids,
each source's seq and PostgreSQL's rows: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import signal
import time
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
from helpers import (
    SSEStream,
    TcpProxy,
    free_port,
    get_json,
    running_hub,
    running_mock,
    spawn_hub,
    stop_process,
    subscribe,
)

from tickhub.config import Settings


@pytest.fixture
def cluster(settings: Settings, redis_url: str, redis_keys: str) -> Settings:
    """Replica settings: this test's schema is also its namespace in Redis; short lease and claims."""
    return settings.replace(broker_url=redis_url, lease_ttl=1.0, broker_claim_after=2.0)


def seqs_of(ticks: list[dict]) -> list[int]:
    return [t["seq"] for t in ticks]


async def stored_seqs(settings: Settings, source: str) -> list[int]:
    conn = await asyncpg.connect(settings.database_url, server_settings={"search_path": settings.database_schema})
    try:
        return [r[0] for r in await conn.fetch("SELECT seq FROM ticks WHERE source = $1 ORDER BY seq", source)]
    finally:
        await conn.close()


async def test_subscribers_on_two_replicas_see_the_same_ids_in_the_same_order(cluster: Settings) -> None:
    async with running_mock(("BTCUSD", "META"), interval=0.003) as source:
        s = cluster.replace(sources=(("mock", source.url),))
        async with running_hub(s) as a, running_hub(s) as b:
            assert {a.hub.role, b.hub.role} == {"ingesting", "standby"}, "exactly one replica ingests"
            async with subscribe(a.url) as on_a, subscribe(b.url) as on_b:
                await on_a.next_event("snapshot")
                await on_b.next_event("snapshot")
                got_a, got_b = await asyncio.gather(on_a.ticks(400), on_b.ticks(400))
            start = max(int(got_a[0]["id"]), int(got_b[0]["id"]))
            tail_a = [t for t in got_a if int(t["id"]) >= start]
            tail_b = [t for t in got_b if int(t["id"]) >= start]
            n = min(len(tail_a), len(tail_b))
            assert n > 300 and tail_a[:n] == tail_b[:n], "the same ticks, ids and order on both replicas"
            assert seqs_of(tail_a) == list(range(tail_a[0]["seq"], tail_a[0]["seq"] + len(tail_a)))
            _status, health = await get_json(f"{b.url}/health")
            assert health["broker"]["url"].startswith("redis://") and health["role"] in ("ingesting", "standby")


@pytest.mark.parametrize("retention", [300.0, 0.0])
async def test_a_replica_resumes_what_its_ring_lost_from_the_stream_then_postgresql(
    cluster: Settings, retention: float
) -> None:
    """Rings of 64 ticks: a resume 400 ticks back comes from the Redis stream while it keeps them,
    and from PostgreSQL once the stream has let them go (retention 0: trimmed once written)."""
    async with running_mock(("BTCUSD", "META"), interval=0.002) as source:
        s = cluster.replace(sources=(("mock", source.url),), ring_size=64, stream_retention=retention)
        async with running_hub(s) as a, running_hub(s) as b:
            async with subscribe(a.url) as live:
                await live.next_event("snapshot")
                got = await live.ticks(400)
            oldest = int(got[0]["id"])
            if retention == 0:
                await wait_for_async(lambda: _trimmed_past(b, oldest), 10, "the stream to let the old ticks go")
            async with subscribe(b.url, last_event_id=got[0]["id"]) as resumed:
                again = await resumed.ticks(len(got) - 1)
            assert again == got[1:], "every tick after the id, once, in order, the same bytes"
            tier = "log" if retention else "postgres"
            assert b.hub.replayed[tier] > 0, b.hub.replayed


async def _trimmed_past(running, tick_id: int) -> bool:
    first = await running.hub.broker.first_id()
    return first is not None and first > tick_id


async def role(url: str) -> str | None:
    try:
        _status, health = await get_json(f"{url}/health")
    except Exception:
        return None
    return health.get("role")


async def test_killing_the_ingesting_replica_moves_ingest_and_its_subscriber_resumes_elsewhere(
    cluster: Settings,
) -> None:
    """kill -9 of the replica that ingests: another takes the lease within a few seconds; a subscriber
    of the dead replica resumes on a live one by Last-Event-ID with every seq once; PostgreSQL gets
    every seq once (what the dead replica was handed but never wrote is written by another)."""
    async with running_mock(("BTCUSD",), interval=0.005, name="mock") as source:
        ports = [free_port(), free_port()]
        env = {"broker_url": cluster.broker_url, "lease_ttl": "1.0", "broker_claim_after": "2.0"}
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        # The first replica ingests, and its writer sits on its share of the ticks (it flushes only
        # every minute), so that PostgreSQL is complete only if the survivor takes that share over.
        procs = [spawn_hub(cluster, ports[0], f"mock={source.url}", writer_flush_interval="60", **env)]
        try:
            await wait_for_async(lambda: _is(role(urls[0]), "ingesting"), 30, "the first replica to ingest")
            procs.append(spawn_hub(cluster, ports[1], f"mock={source.url}", **env))
            await wait_for_async(lambda: _is(role(urls[1]), "standby"), 30, "the second replica to stand by")
            async with subscribe(urls[0]) as stream:
                await stream.next_event("snapshot")
                before = await stream.ticks(200)
                procs[0].send_signal(signal.SIGKILL)
                procs[0].wait(10)
                before += await drain(stream)
            killed_at = time.monotonic()
            await wait_for_async(lambda: _is(role(urls[1]), "ingesting"), 10, "the standby to take over ingest")
            took_over = time.monotonic() - killed_at
            async with subscribe(urls[1], last_event_id=before[-1]["id"]) as resumed:
                after = await resumed.ticks(300)
            seen = seqs_of(before) + seqs_of(after)
            assert seen == list(range(seen[0], seen[0] + len(seen))), "every seq once, none missing, across the move"
            ids = [int(t["id"]) for t in before + after]
            assert ids == sorted(set(ids)), "ids only grow"
            assert took_over < 8, f"ingest moved in {took_over:.1f}s"
            last = seen[-1]
            await wait_for_async(
                lambda: _stored_through(cluster, last), 20, "PostgreSQL to hold every seq (claims included)"
            )
            stored = await stored_seqs(cluster, "mock")
            assert stored == list(range(stored[0], stored[0] + len(stored))), "each seq stored once, no gap"
            assert stored[0] <= seen[0] and stored[-1] >= last
            _status, health = await get_json(f"{urls[1]}/health")
            assert health["broker"]["claimed"] > 0, "the dead replica's unwritten share was taken over"
        finally:
            for proc in procs:
                if proc.poll() is None:
                    stop_process(proc)


async def _is(value, expected: str) -> bool:
    return (await value) == expected


async def _stored_through(settings: Settings, seq: int) -> bool:
    stored = await stored_seqs(settings, "mock")
    return bool(stored) and stored[-1] >= seq and len(stored) == stored[-1] - stored[0] + 1


async def drain(stream: SSEStream) -> list[dict]:
    """Whatever ticks the stream still delivers before its connection ends."""
    got: list[dict] = []
    while True:
        try:
            got += await stream.ticks(1, timeout=2)
        except (EOFError, TimeoutError, aiohttp.ClientError):
            return got


async def wait_for_async(check, timeout: float, what: str):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_a_redis_outage_pauses_the_stream_and_it_goes_on_after_with_every_seq_once(cluster: Settings) -> None:
    """Redis unreachable (a proxy the test blocks) for longer than the lease: the replica says it is
    degraded, stops ingesting, keeps its subscriber (heartbeats), and when Redis is back takes the
    lease again and resumes the source after the newest seq in the stream: nothing lost, none twice."""
    redis_port = urlsplit(cluster.broker_url).port or 6379
    async with TcpProxy(redis_port) as proxy, running_mock(("BTCUSD",), interval=0.005) as source:
        s = cluster.replace(
            sources=(("mock", source.url),), broker_url=f"redis://127.0.0.1:{proxy.port}/0", heartbeat=0.3
        )
        async with running_hub(s) as hub, subscribe(hub.url) as stream:
            await stream.next_event("snapshot")
            before = await stream.ticks(100)
            gained = hub.hub.lease.gained
            proxy.block()
            await wait_for_async(lambda: _status_is(hub.url, "degraded"), 15, "the replica to say it is degraded")
            await wait_for_async(lambda: _is(role(hub.url), "standby"), 15, "ingest to stop without the lease")
            await stream.wait_comments(stream.comments + 2, timeout=10)  # the subscriber is kept, heartbeats go on
            proxy.unblock()
            await wait_for_async(lambda: _is(role(hub.url), "ingesting"), 20, "the lease to be taken again")
            after = await stream.ticks(200, timeout=30)
            assert hub.hub.lease.gained > gained
    seen = seqs_of(before) + seqs_of(after)
    assert seen == list(range(seen[0], seen[0] + len(seen))), "every seq once across the outage"


async def _status_is(url: str, expected: str) -> bool:
    try:
        _code, health = await get_json(f"{url}/health")
    except Exception:
        return False
    return health.get("status") == expected
