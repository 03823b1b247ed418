"""The hub restarted on the same database: ids keep increasing, ingest and subscribers resume."""

from __future__ import annotations

import signal

import asyncpg
from helpers import (
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
from tickhub.sequencer import RUN_SPAN


async def fetch_seqs(settings: Settings) -> list[tuple[int, int]]:
    conn = await asyncpg.connect(settings.database_url, server_settings={"search_path": settings.database_schema})
    try:
        return [(r["id"], r["seq"]) for r in await conn.fetch("SELECT id, seq FROM ticks ORDER BY id")]
    finally:
        await conn.close()


async def test_graceful_restart_keeps_ids_increasing_and_resumes_everyone(settings: Settings) -> None:
    async with running_mock(("BTCUSD", "META"), interval=0.005) as source:
        hub_settings = settings.replace(sources=(("mock", source.url),))
        async with running_hub(hub_settings) as first:
            async with subscribe(first.url) as stream:
                await stream.next_event("snapshot")
                before = await stream.ticks(100)
            first_run = first.hub.run
        # Everything the first hub sent was flushed on the way down.
        assert (await fetch_seqs(settings))[-1][0] >= int(before[-1]["id"])
        async with running_hub(hub_settings) as second:
            assert second.hub.run > first_run
            async with subscribe(second.url, last_event_id=before[-1]["id"]) as resumed:
                after = await resumed.ticks(200)
    ids = [int(t["id"]) for t in before + after]
    assert ids == sorted(set(ids)), "ids strictly increase across the restart"
    assert any(i // RUN_SPAN == second.hub.run for i in ids)
    seqs = [t["seq"] for t in before + after]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "no tick missed or doubled across the restart"
    rows = await fetch_seqs(settings)
    assert [s for _, s in rows] == sorted({s for _, s in rows}), "PostgreSQL holds each seq once"


async def test_hub_killed_with_sigkill_restarts_with_higher_ids_and_no_gap(settings: Settings) -> None:
    """The promise after a crash: ids keep increasing, and a subscriber that resumes by Last-Event-ID
    gets every (source, seq) after it exactly once (the write-ahead log kept what was streamed)."""
    port = free_port()
    async with running_mock(("BTCUSD",), interval=0.005) as source:
        proc = spawn_hub(settings, port, f"mock={source.url}")
        try:
            url = f"http://127.0.0.1:{port}"
            await wait_for(lambda: proc.poll() is not None or port_open(port), 30, "the hub process")
            async with subscribe(url) as stream:
                await stream.next_event("snapshot")
                before = await stream.ticks(100)
                stop_process(proc, signal.SIGKILL)
            proc = spawn_hub(settings, port, f"mock={source.url}")
            await wait_for(lambda: proc.poll() is not None or port_open(port), 30, "the restarted hub")
            async with subscribe(url, last_event_id=before[-1]["id"]) as resumed:
                after = await resumed.ticks(200)
            status, health = await get_json(f"{url}/health")
            assert status == 200 and health["run"] > int(before[0]["id"]) // RUN_SPAN
        finally:
            stop_process(proc)
    assert all(int(a["id"]) > int(before[-1]["id"]) for a in after), "ids keep increasing after the crash"
    seen: dict[int, int] = {}
    for tick in before + after:
        seen[tick["seq"]] = seen.get(tick["seq"], 0) + 1
    seqs = sorted(seen)
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "no (source, seq) missed across the crash"
    assert all(n == 1 for n in seen.values()), "no (source, seq) twice across the crash"
