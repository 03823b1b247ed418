"""Ticks the hub sent but PostgreSQL does not hold: a resume across them resyncs, never jumps silently —
while the hub runs, after a restart, and while the writer is merely behind."""

from __future__ import annotations

from urllib.parse import urlsplit

import asyncpg
import orjson
from helpers import TcpProxy, running_hub, running_mock, subscribe, via_proxy, wait_for

from tickhub.config import Settings
from tickhub.sequencer import RUN_SPAN


async def resume_outcome(url: str, last_event_id: int, n: int = 50) -> tuple[str | None, list[int]]:
    """Resume after ``last_event_id``: the resync reason if one comes first, and the tick ids read."""
    async with subscribe(url, last_event_id=str(last_event_id)) as stream:
        ids: list[int] = []
        while len(ids) < n:
            event = await stream.next()
            if event.event == "resync":
                return orjson.loads(event.data)["reason"], ids
            if event.event == "tick":
                ids.append(int(event.id))
    return None, ids


async def test_dropped_ticks_are_remembered_across_a_restart(settings: Settings) -> None:
    async with running_mock(("BTCUSD",), interval=0.002) as source:
        async with TcpProxy(urlsplit(settings.database_url).port or 5432) as proxy:
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
                before = hub.hub.market.last_id
                proxy.block()
                await wait_for(lambda: writer.dropped >= 200, 20, "drops past the bound")
                proxy.unblock()
                sent = hub.hub.market.last_id  # the backlog counts the batch in flight: wait for the ids instead
                await wait_for(lambda: not writer.failing and writer.persisted_id >= sent, 20, "the backlog to flush")
                reason, _ = await resume_outcome(hub.url, before)
                assert reason == "history_unavailable", "while the hub runs"
        async with running_hub(settings.replace(sources=(("mock", source.url),), ring_size=64)) as hub:
            reason, ids = await resume_outcome(hub.url, before)
            assert reason == "history_unavailable", f"after a restart a resume skipped silently: {ids[:5]}"
            # A resume after the gap still works exactly: from the newest id of the first run.
            conn = await asyncpg.connect(
                settings.database_url, server_settings={"search_path": settings.database_schema}
            )
            try:
                gaps = await conn.fetch("SELECT first_id, last_id, reason FROM tick_gaps ORDER BY first_id")
                last_of_run = await conn.fetchval(
                    "SELECT max(id) FROM ticks WHERE id < $1", (before // RUN_SPAN + 1) * RUN_SPAN
                )
            finally:
                await conn.close()
            assert gaps and all(g["reason"] == "dropped" for g in gaps)
            assert sum(g["last_id"] - g["first_id"] + 1 for g in gaps) >= 200
            reason, ids = await resume_outcome(hub.url, last_of_run, n=5)
            assert reason is None and ids[0] > last_of_run


async def test_a_resume_into_ticks_the_writer_has_not_written_yet_never_skips_them(settings: Settings) -> None:
    """Out of the ring but not yet in PostgreSQL: the broker's log keeps every unwritten tick (a guard)."""
    async with (
        running_mock(("BTCUSD",), interval=0.002) as source,
        running_hub(settings.replace(sources=(("mock", source.url),), ring_size=64)) as hub,
    ):
        writer = hub.hub.writer
        await wait_for(lambda: writer.written > 0, what="a first write")
        admin = await asyncpg.connect(settings.database_url)
        try:
            async with admin.transaction():  # writes wait for this lock; reads do not
                await admin.execute(f'LOCK TABLE "{settings.database_schema}".ticks IN EXCLUSIVE MODE')
                await wait_for(lambda: writer.in_flight > 0, what="a write waiting for the lock")
                start = writer.persisted_id
                await wait_for(lambda: hub.hub.market.last_id > start + 200, what="the ring to move past the start")
                reason, ids = await resume_outcome(hub.url, start)
                assert reason == "history_unavailable" or ids == list(range(start + 1, start + 1 + len(ids))), (
                    f"a resume skipped unwritten ticks: {ids[:3]} after {start}"
                )
        finally:
            await admin.close()
        await wait_for(lambda: hub.hub.writer.persisted_id > start + 200, what="the writer to catch up")
        reason, ids = await resume_outcome(hub.url, start, n=200)
        assert reason is None and ids == list(range(start + 1, start + 201))
