"""Faults over real sockets and processes: PostgreSQL down, stalled subscribers, SIGTERM under
load, a flooding source. Each checks ids and PostgreSQL rows: nothing lost, nothing doubled, or
the loss counted where the design says it may happen. `make soak` runs the same checks longer."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
import psutil
import pytest
from helpers import (
    TcpProxy,
    free_port,
    get_json,
    port_open,
    running_hub,
    running_mock,
    spawn_hub,
    stop_process,
    subscribe,
    wait_for,
)

from tickhub.config import Settings

SOAK = os.environ.get("TICKHUB_SOAK") == "1"


def via_proxy(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


async def rows(settings: Settings) -> list[tuple[int, int]]:
    conn = await asyncpg.connect(settings.database_url, server_settings={"search_path": settings.database_schema})
    try:
        return [(r["id"], r["seq"]) for r in await conn.fetch("SELECT id, seq FROM ticks ORDER BY id")]
    finally:
        await conn.close()


async def test_postgres_outage_streaming_goes_on_and_the_backlog_flushes_after(settings: Settings) -> None:
    pg_port = urlsplit(settings.database_url).port or 5432
    async with TcpProxy(pg_port) as proxy, running_mock(("BTCUSD", "META"), interval=0.005) as source:
        hub_settings = settings.replace(
            database_url=via_proxy(settings.database_url, proxy.port),
            sources=(("mock", source.url),),
            db_timeout=2.0,
            reconnect_max=0.2,
        )
        async with running_hub(hub_settings) as hub, subscribe(hub.url) as stream:
            writer = hub.hub.writer
            await stream.next_event("snapshot")
            seen = await stream.ticks(50)
            for _outage in range(3 if SOAK else 1):
                proxy.block()
                await wait_for(lambda: writer.failing, 10, "the writer to notice the outage")
                status, health = await get_json(f"{hub.url}/health")
                assert health["status"] == "degraded" and health["writer"]["failing"]
                backlog = writer.backlog_size
                seen += await stream.ticks(300)  # the stream goes on without the database
                assert writer.backlog_size > backlog, "ticks queue while PostgreSQL is away"
                status, _ = await get_json(f"{hub.url}/prices/BTCUSD/history")
                assert status == 503, "history needs the database: a clear 503"
                proxy.unblock()
                sent = hub.hub.market.last_id  # the backlog counts the batch in flight: wait for the ids instead
                await wait_for(
                    lambda sent=sent: not writer.failing and writer.persisted_id >= sent, 20, "the backlog to flush"
                )
            last = int(seen[-1]["id"])
            await wait_for(lambda: writer.persisted_id >= last, 10, "the writer")
            assert writer.dropped == 0
    stored = await rows(settings)
    delivered = [(int(t["id"]), t["seq"]) for t in seen]
    assert [r for r in stored if delivered[0][0] <= r[0] <= last] == delivered, "every tick sent is stored once"


async def test_beyond_the_backlog_bound_drops_are_counted_and_never_silent(settings: Settings) -> None:
    pg_port = urlsplit(settings.database_url).port or 5432
    async with TcpProxy(pg_port) as proxy, running_mock(("BTCUSD",), interval=0.002) as source:
        hub_settings = settings.replace(
            database_url=via_proxy(settings.database_url, proxy.port),
            sources=(("mock", source.url),),
            writer_backlog=100,
            writer_batch=50,
            ring_size=64,
            db_timeout=2.0,
            reconnect_max=0.2,
        )
        async with running_hub(hub_settings) as hub:
            writer = hub.hub.writer
            await wait_for(lambda: writer.written > 0, what="a first write")
            first_lost = hub.hub.market.last_id
            proxy.block()
            await wait_for(lambda: writer.dropped >= 200, 20, "drops past the bound")
            assert writer.backlog_size <= 100
            _status, health = await get_json(f"{hub.url}/health")
            assert health["writer"]["dropped"] >= 200
            async with subscribe(hub.url) as probe:
                await probe.next_event("snapshot")
            import aiohttp

            async with aiohttp.ClientSession() as session, session.get(f"{hub.url}/metrics") as response:
                text = await response.text()
            assert any(
                line.startswith("tickhub_writer_dropped_total ") and float(line.split()[1]) >= 200
                for line in text.splitlines()
            )
            proxy.unblock()
            sent = hub.hub.market.last_id  # the backlog counts the batch in flight: wait for the ids instead
            await wait_for(lambda: not writer.failing and writer.persisted_id >= sent, 20, "the backlog to flush")
            async with subscribe(hub.url, last_event_id=str(first_lost)) as resumed:
                event = await resumed.next()
                assert event.event == "resync", "a resume across dropped ticks is refused, not silently gapped"
                assert orjson.loads(event.data)["reason"] == "history_unavailable"
            dropped = writer.dropped
    stored = await rows(settings)
    run_ids = [i for i, _ in stored if i > first_lost]
    assert len(run_ids) + dropped >= hub.hub.market.last_id - first_lost - 1


async def test_a_slow_postgres_pauses_ingest_and_the_sources_hold_the_ticks(settings: Settings) -> None:
    """PostgreSQL reachable but not keeping up: the hub stops reading its source past the writer's high
    water instead of queueing without bound or dropping, then reads on; every tick is stored once."""
    pg_port = urlsplit(settings.database_url).port or 5432
    total = 20000
    async with TcpProxy(pg_port) as proxy, running_mock(("BTCUSD", "META"), interval=0, limit=total) as source:
        hub_settings = settings.replace(
            database_url=via_proxy(settings.database_url, proxy.port),
            sources=(("mock", source.url),),
            writer_batch=500,
            writer_high_water=1000,
            db_timeout=30.0,
        )
        async with running_hub(hub_settings) as hub:
            writer, stats = hub.hub.writer, hub.hub.ingest.clients["mock"].stats
            await wait_for(lambda: writer.written > 0, what="a first write")
            proxy.stall()
            await wait_for(lambda: not writer.room.is_set(), 10, "ingest to pause")
            await wait_for(lambda: source.feed.next_seq - source.feed.first_seq == total, 10, "the source to finish")
            _status, health = await get_json(f"{hub.url}/health")
            assert health["writer"]["ingest_paused"] and not health["writer"]["failing"]
            assert stats.accepted < total, "the source holds what the hub has not read"
            assert writer.backlog_size <= 1000 + 1000, "the queue stops near its high water (plus one read)"
            proxy.flow()
            await wait_for(lambda: stats.accepted == total, 30, "every tick to be read")
            await wait_for(lambda: writer.persisted_id >= (hub.hub.market.last_id or 0), 30, "every tick to be written")
            assert writer.dropped == 0 and writer.pauses >= 1 and stats.gaps == 0
    stored = await rows(settings)
    assert len(stored) == total
    assert [s for _, s in stored] == list(range(stored[0][1], stored[0][1] + total)), "each seq once, in order"


def accepted(port: int) -> list:
    """The hub's side of the open connections to ``port`` (the hub runs in this process)."""
    return [
        c
        for c in psutil.Process().net_connections(kind="tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
    ]


def slow_socket(port: int, rcvbuf: int = 4096) -> socket.socket:
    """A client that opens /stream with a tiny receive buffer and then reads only when told."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
    sock.setblocking(False)
    return sock


async def test_a_subscriber_that_stops_reading_is_dropped_and_the_others_carry_on(settings: Settings) -> None:
    async with running_mock(("BTCUSD", "META", "TCSG"), interval=0.001) as source:
        hub_settings = settings.replace(sources=(("mock", source.url),), subscriber_backlog=32768, slow_timeout=1.0)
        async with running_hub(hub_settings, sndbuf=8192) as hub, subscribe(hub.url) as healthy:
            fanout = hub.hub.fanout
            await healthy.next_event("snapshot")
            stalled = [slow_socket(hub.port) for _ in range(3)]
            try:
                await wait_for(lambda: fanout.busy_count >= 3, 20, "the stalled subscribers to block")
                got = await healthy.ticks(1000)
                ids = [int(t["id"]) for t in got]
                assert ids == list(range(ids[0], ids[0] + len(ids))), "the healthy subscriber misses nothing"
                await wait_for(lambda: fanout.slow_disconnects >= 3, 20, "the stalled subscribers to be dropped")
                assert fanout.busy_count == 0 and fanout.count == 1
                assert fanout.backlog_bytes() == 0
                # Dropped means the connection is gone, not a socket the hub keeps open for a client
                # that will never read what is queued on it.
                await wait_for(lambda: len(accepted(hub.port)) == 1, 10, "the hub to close the stalled connections")
            finally:
                for sock in stalled:
                    sock.close()


async def test_a_slow_reader_past_its_backlog_is_resynced(settings: Settings) -> None:
    async with running_mock(("BTCUSD", "META", "TCSG"), interval=0.001) as source:
        hub_settings = settings.replace(
            sources=(("mock", source.url),), subscriber_backlog=16384, slow_timeout=30.0, slow_overflows=100
        )
        async with running_hub(hub_settings, sndbuf=8192) as hub:
            sock = slow_socket(hub.port)
            loop = asyncio.get_running_loop()
            received = bytearray()
            try:
                await wait_for(lambda: hub.hub.fanout.busy_count >= 1, 20, "the reader to fall behind")
                while b"event: resync" not in received:
                    await asyncio.sleep(0.05)  # the client's own pace: a slow reader, by design of this test
                    try:
                        received += await asyncio.wait_for(loop.sock_recv(sock, 2048), 5)
                    except TimeoutError:
                        pass
                    if len(received) > 50_000_000:
                        raise AssertionError("no resync in 50 MB")
                assert hub.hub.fanout.resyncs >= 1
                after = received.split(b"event: resync", 1)[1]
                assert b"event: snapshot" in after or len(after) < 4096
            finally:
                sock.close()


async def test_sigterm_under_load_drains_flushes_and_exits_zero(settings: Settings) -> None:
    port = free_port()
    async with running_mock(("BTCUSD", "META"), interval=0.001) as source:
        proc = spawn_hub(settings, port, f"mock={source.url}", writer_flush_interval="0.5")
        try:
            await wait_for(lambda: port_open(port), 30, "the hub")
            async with subscribe(f"http://127.0.0.1:{port}") as stream:
                await stream.next_event("snapshot")
                seen = await stream.ticks(500)
                proc.send_signal(signal.SIGTERM)
                try:
                    while True:
                        seen += await stream.ticks(1, timeout=10)
                except EOFError:
                    pass  # the hub ended the stream cleanly
            code = await asyncio.to_thread(proc.wait, 15)
            assert code == 0, proc.stderr.read().decode() if proc.stderr else ""
        finally:
            stop_process(proc, signal.SIGKILL)
    stored = dict(await rows(settings))
    assert all(int(t["id"]) in stored for t in seen), "every tick sent before the stop was flushed"


async def test_a_flooding_source_does_not_starve_the_others(settings: Settings) -> None:
    async with (
        running_mock(("FLOOD",), interval=0, name="flood") as flood,
        running_mock(("CALM",), interval=0.02, name="calm") as calm,
    ):
        hub_settings = settings.replace(sources=(("flood", flood.url), ("calm", calm.url)))
        async with running_hub(hub_settings) as hub:
            clients = hub.hub.ingest.clients
            await wait_for(lambda: clients["flood"].stats.accepted > 20_000, 30, "the flood")
            calm_before = clients["calm"].stats.accepted
            await wait_for(lambda: clients["calm"].stats.accepted >= calm_before + 20, 10, "the calm source")
            status, health = await get_json(f"{hub.url}/health")
            assert status == 200 and health["sources"]["calm"]["state"] == "connected"
            async with subscribe(hub.url, "?symbols=CALM") as stream:
                await stream.next_event("snapshot")
                assert len(await stream.ticks(5)) == 5


@pytest.mark.parametrize("cap", [3])
async def test_too_many_streams_from_one_client_get_429(settings: Settings, cap: int) -> None:
    import aiohttp

    async with running_hub(settings.replace(max_streams_per_client=cap)) as hub, aiohttp.ClientSession() as session:
        streams = [await session.get(f"{hub.url}/stream") for _ in range(cap)]
        try:
            assert all(r.status == 200 for r in streams)
            async with session.get(f"{hub.url}/stream") as response:
                assert response.status == 429
                assert (await response.json())["error"]["code"] == "too_many_streams"
            streams.pop().close()
            await wait_for(lambda: hub.hub.fanout.count == cap - 1, what="a stream to close")
            async with session.get(f"{hub.url}/stream") as response:
                assert response.status == 200, "a freed slot can be used again"
        finally:
            for response in streams:
                response.close()


@pytest.mark.parametrize("send_buffer", [0, 65536, Settings().send_buffer])
def test_the_send_buffer_setting_reaches_every_accepted_connection(send_buffer: int) -> None:
    """TICKHUB_SEND_BUFFER is set on the listener, so each accepted connection has it (Linux reports
    twice the value asked for); 0 leaves the kernel's default and autotuning. The default is bounded."""
    assert 0 < Settings().send_buffer <= 1 << 20, "a stalled client must not pin megabytes by default"
    from tickhub.server import listen_socket

    default = socket.socket().getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    listener = listen_socket(Settings(host="127.0.0.1", port=0, send_buffer=send_buffer))
    try:
        listener.listen()
        with socket.create_connection(listener.getsockname()):
            conn, _ = listener.accept()
            with conn:
                size = conn.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    finally:
        listener.close()
    if send_buffer:
        assert size == 2 * send_buffer
    else:
        assert size >= default  # left to the kernel, which grows it as it sees fit
