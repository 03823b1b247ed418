"""``tickhub hub --workers N``: N hub processes on one port sharing the Redis log. Connections spread
over the workers; every subscriber gets every tick with the same ids; a worker that dies is started
again; SIGTERM stops them all and exits 0; memory:// is refused with the reason."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import psutil
import pytest
from helpers import free_port, get_json, port_open, running_mock, stop_process, subscribe, wait_for

from tickhub.broker_redis import delete_namespace
from tickhub.config import Settings


def spawn_workers(settings: Settings, port: int, sources: str, redis_url: str, workers: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "TICKHUB_DATABASE_URL": settings.database_url or "",
        "TICKHUB_DATABASE_SCHEMA": settings.database_schema,
        "TICKHUB_DATA_DIR": settings.data_dir,
        "TICKHUB_BROKER_URL": redis_url,
        "TICKHUB_LEASE_TTL": "1",
        "TICKHUB_PORT": str(port),
        "TICKHUB_SOURCES": sources,
        "TICKHUB_RECONNECT_MIN": "0.05",
        "TICKHUB_RECONNECT_MAX": "0.5",
        "TICKHUB_HEARTBEAT": "0.5",
        "TICKHUB_INSTRUMENTS": "none",
        "TICKHUB_LOG_LEVEL": "warning",
    }
    argv = [sys.executable, "-m", "tickhub", "hub", "--workers", str(workers)]
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def workers_of(process: subprocess.Popen) -> list[psutil.Process]:
    """The supervisor's live workers (one just killed is a zombie until it is reaped)."""
    found = []
    for child in psutil.Process(process.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "--reuse-port" in child.cmdline():
                found.append(child)
        except psutil.Error:
            continue
    return found


async def test_workers_share_one_port_and_every_subscriber_gets_every_tick(
    settings: Settings, redis_url: str, redis_keys: str
) -> None:
    port = free_port()
    async with running_mock(("BTCUSD", "META"), interval=0.01) as source:
        supervisor = spawn_workers(settings, port, f"mock={source.url}", redis_url, 2)
        try:
            await wait_for(lambda: port_open(port) and len(workers_of(supervisor)) == 2, 30, "two workers")
            url = f"http://127.0.0.1:{port}"
            hub_ids: set[str] = set()

            async def both_answer() -> None:  # the kernel hashes each new connection to a worker
                async with asyncio.timeout(30):
                    while len(hub_ids) < 2:
                        _, health = await get_json(f"{url}/health", headers={"Connection": "close"})
                        hub_ids.add(health["hub_id"])

            await both_answer()
            streams = []
            async with asyncio.TaskGroup() as group:
                for _ in range(8):
                    group.create_task(read_ticks(url, streams))
            first = min(int(s[0]["id"]) for s in streams)
            common = [[t["id"] for t in s if int(t["id"]) >= first + 50][:50] for s in streams]
            assert all(c == common[0] and len(c) == 50 for c in common), "the same ticks, ids and order everywhere"

            one = workers_of(supervisor)[0]
            one.send_signal(signal.SIGKILL)
            await wait_for(
                lambda: len(workers_of(supervisor)) == 2 and one.pid not in {w.pid for w in workers_of(supervisor)},
                30,
                "the dead worker started again",
            )
            assert supervisor.poll() is None
            assert stop_process(supervisor, signal.SIGTERM, timeout=30) == 0
            await wait_for(lambda: not port_open(port), 10, "the port closed")
        finally:
            stop_process(supervisor, signal.SIGKILL)
    await delete_namespace(redis_url, settings.database_schema)


async def read_ticks(url: str, into: list) -> None:
    async with subscribe(url) as stream:
        await stream.next_event("snapshot")
        into.append(await stream.ticks(150, timeout=20))


def test_workers_need_a_redis_broker(settings: Settings) -> None:
    env = {**os.environ, "TICKHUB_DATABASE_URL": settings.database_url or "", "TICKHUB_BROKER_URL": "memory://"}
    result = subprocess.run(
        [sys.executable, "-m", "tickhub", "hub", "--workers", "2"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "needs TICKHUB_BROKER_URL=redis://" in result.stderr


@pytest.mark.parametrize("workers", ["0", "x"])
def test_a_bad_worker_count_is_refused(workers: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tickhub", "hub", "--workers", workers], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "--workers" in result.stderr
