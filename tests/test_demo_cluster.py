"""`make start-cluster` (`tickhub demo --replicas 3`): three hub replicas on consecutive ports share the
machine's Redis; one ingests, all stream the same ticks; Ctrl-C stops every process. Without Redis
it says so in one line instead of starting."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path

from helpers import alive, free_port_block, get_json, running_demo, subscribe, wait_for


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TICKHUB_")}


async def test_three_replicas_share_one_stream_and_stop_cleanly(
    tmp_path: Path, redis_url: str, redis_keys: str
) -> None:
    port = free_port_block(13)  # replicas on port..port+2, the mock sources from port+10
    env = clean_env() | {
        "TICKHUB_PORT": str(port),
        "TICKHUB_DATA_DIR": str(tmp_path / "data"),
        "TICKHUB_BROKER_URL": redis_url,
        "TICKHUB_DATABASE_SCHEMA": redis_keys,  # this test's own keys in Redis
    }
    async with running_demo("--replicas", "3", "--no-bots", "--interval", "0.1", env=env, cwd=tmp_path) as demo:
        descendants = demo.descendants()
        urls = [f"http://127.0.0.1:{port + i}" for i in range(3)]
        roles = [(await get_json(f"{url}/health"))[1]["role"] for url in urls]
        assert sorted(roles) == ["ingesting", "standby", "standby"], roles
        async with contextlib.AsyncExitStack() as stack:
            subscribers = [await stack.enter_async_context(subscribe(url)) for url in urls]
            for stream in subscribers:
                await stream.next_event("snapshot")
            streams = await asyncio.gather(*(stream.ticks(30) for stream in subscribers))
        common = set.intersection(*({t["id"] for t in s} for s in streams))
        assert common, "the replicas stream the same ticks"
        for s in streams:
            by_id = {t["id"]: t for t in s}
            assert all(by_id[i] == next(t for t in streams[0] if t["id"] == i) for i in common)
        code = await demo.interrupt()
        assert code == 0, demo.text[-3000:]
        assert not [p for p in descendants if alive(p.pid)], "no stray processes"
        assert "Traceback" not in demo.text and "stopped with exit code" not in demo.text, demo.text[-6000:]


def test_without_redis_the_cluster_demo_says_so_and_does_not_start(tmp_path: Path) -> None:
    env = clean_env() | {"TICKHUB_BROKER_URL": "redis://127.0.0.1:1/0", "TICKHUB_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "tickhub", "demo", "--replicas", "3"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Redis at redis://127.0.0.1:1/0 is not reachable" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "pgdata").exists()


async def test_the_demo_with_two_workers_on_one_port_streams_and_stops_cleanly(
    tmp_path: Path, redis_url: str, redis_keys: str
) -> None:
    port = free_port_block(4)  # the hub's workers on port, the mock sources from port+1
    env = clean_env() | {
        "TICKHUB_PORT": str(port),
        "TICKHUB_DATA_DIR": str(tmp_path / "data"),
        "TICKHUB_BROKER_URL": redis_url,
        "TICKHUB_DATABASE_SCHEMA": redis_keys,
    }
    async with running_demo("--workers", "2", "--no-bots", "--interval", "0.1", env=env, cwd=tmp_path) as demo:

        def workers() -> list:
            return [p for p in demo.descendants() if alive(p.pid) and "--reuse-port" in " ".join(p.cmdline())]

        await wait_for(lambda: len(workers()) == 2, 30, "both workers")
        async with subscribe(f"http://127.0.0.1:{port}") as stream:
            await stream.next_event("snapshot")
            ticks = await stream.ticks(10)
        assert len(ticks) == 10
        descendants = demo.descendants()
        code = await demo.interrupt()
        assert code == 0, demo.text[-3000:]
        assert not [p for p in descendants if alive(p.pid)], "no stray processes"
        assert "Traceback" not in demo.text and "stopped with exit code" not in demo.text, demo.text[-6000:]
