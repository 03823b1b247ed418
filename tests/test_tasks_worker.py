"""The task worker gives up its run the moment it loses the connection that holds the worker lock."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import aiohttp
import asyncpg
from helpers import RunningHub, TcpProxy, get_json, running_hub, wait_for

from tickhub.config import Settings

# The holder of a single-bigint advisory lock is found by its key split over classid and objid.
SQL_LOCK_HOLDER = """
SELECT pid FROM pg_locks
WHERE locktype = 'advisory' AND granted AND objsubid = 1
  AND ((classid::bigint << 32) | objid::bigint) = hashtext('tickhub.tasks.worker.' || $1)::bigint
"""


def running_worker(hub: RunningHub) -> bool:
    return hub.hub.tasks.state == "active" and hub.hub.tasks.running is not None


@contextlib.asynccontextmanager
async def watching(check: Callable[[], bool]) -> AsyncIterator[list[bool]]:
    """Evaluate ``check`` on every turn of the loop until the block ends; yields the list of failures."""
    failures: list[bool] = []

    async def watch() -> None:
        while True:
            if not check():
                failures.append(True)
            await asyncio.sleep(0.005)

    task = asyncio.create_task(watch())
    try:
        yield failures
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def post_task(url: str, num: int, timeout: float) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/tasks", json={"num": num, "timeout": timeout}) as r,
    ):
        assert r.status == 201, await r.text()
        return (await r.json())["id"]


async def test_a_worker_whose_lock_connection_is_killed_stops_and_the_task_runs_once(settings: Settings) -> None:
    task_seconds = 4.0
    async with running_hub(settings) as a, running_hub(settings) as b:
        await wait_for(lambda: {a.hub.tasks.state, b.hub.tasks.state} == {"active", "standby"}, what="one worker")
        first = a if a.hub.tasks.state == "active" else b
        task_id = await post_task(first.url, 7, task_seconds)
        await wait_for(lambda: first.hub.tasks.running == task_id, what="the task to run on the active worker")
        conn = await asyncpg.connect(settings.database_url)
        try:
            pid = await conn.fetchval(SQL_LOCK_HOLDER, settings.database_schema)
            assert pid is not None, "the worker lock is held"
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await conn.close()
        async with watching(lambda: not (running_worker(a) and running_worker(b))) as overlaps:
            await wait_for(lambda: first.hub.tasks.running is None, task_seconds / 2, "the first worker to give up")
            await wait_for(
                lambda: a.hub.tasks.completed + b.hub.tasks.completed == 1, 3 * task_seconds, "the task to finish"
            )
        assert not overlaps, "two workers ran a task at the same time"
        _, results = await get_json(f"{first.url}/tasks/results")
        _, task = await get_json(f"{first.url}/tasks/{task_id}")
    assert [r["id"] for r in results["results"]] == [task_id], "done once"
    # Whichever worker took the lock next ran it again; the run whose lock was lost never finished it.
    assert task["state"] == "done" and task["attempts"] == 2


async def test_a_worker_whose_lock_connection_stalls_stops_running(settings: Settings) -> None:
    # A network partition closes nothing: only a round trip that gets no answer can tell.
    assert settings.database_url is not None
    host_port = settings.database_url.rsplit("@", 1)[1].split("/", 1)[0]
    async with TcpProxy(int(host_port.rsplit(":", 1)[1])) as proxy:
        proxied = settings.database_url.replace(host_port, f"127.0.0.1:{proxy.port}")
        async with running_hub(settings.replace(database_url=proxied)) as hub:
            await wait_for(lambda: hub.hub.tasks.state == "active", what="the worker")
            task_id = await post_task(hub.url, 1, 30)
            await wait_for(lambda: hub.hub.tasks.running == task_id, what="the task to run")
            proxy.stall()
            await wait_for(lambda: hub.hub.tasks.running is None, 10, "the worker to give up its run")
            assert hub.hub.tasks.state != "active"
            assert hub.hub.tasks.completed == 0
            proxy.flow()
