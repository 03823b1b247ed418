"""The bench rig: a paced publisher, a hub (tickhub or the naive baseline) and a fleet of subscriber processes."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import psutil
import stamina

from .common import PYTHON, CpuMeter, Latency, free_port, get_json, spawn, stop, wait_http


class Fleet:
    """Subscriber processes (benchmarks.loadgen), each with its share of the connections."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []
        self.latest: list[dict[str, Any]] = []
        self.lines: list[int] = []
        self._readers: list[asyncio.Task[None]] = []

    async def start(self, port: int, connections: int, processes: int, *extra: str) -> None:
        shares = [connections // processes + (i < connections % processes) for i in range(processes)]
        for share in shares:
            if not share:
                continue
            proc = await asyncio.create_subprocess_exec(
                PYTHON,
                "-m",
                "benchmarks.loadgen",
                "--port",
                str(port),
                "--connections",
                str(share),
                *extra,
                stdout=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
            self.procs.append(proc)
            self.latest.append({})
            self.lines.append(0)
            self._readers.append(asyncio.create_task(self._read(len(self.procs) - 1, proc)))

    async def _read(self, i: int, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            self.latest[i] = orjson.loads(line)
            self.lines[i] += 1

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def totals(self) -> Reading:
        hist = Latency()
        sums: dict[str, float] = {}
        for report in self.latest:
            for key, value in report.items():
                if key == "hist":
                    hist.add(value)
                elif key in ("max_silence_s", "max_ms"):
                    sums[key] = max(sums.get(key, 0.0), value)
                elif key == "min_pings":
                    sums[key] = min(sums.get(key, math.inf), value)
                else:
                    sums[key] = sums.get(key, 0) + value
        return Reading(asyncio.get_running_loop().time(), sums, hist)

    async def wait_open(self, n: int, timeout: float) -> Reading:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            reading = self.totals()
            if reading.get("open") >= n:
                return reading
            if loop.time() > deadline:
                raise RuntimeError(f"only {reading.get('open'):.0f} of {n} subscribers connected in {timeout:.0f}s")
            await asyncio.sleep(0.2)

    async def next_report(self) -> Reading:
        """A reading taken after every process has reported once more."""
        before = list(self.lines)
        while any(now == then for now, then in zip(self.lines, before, strict=True)):  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # report lines come every half second; a poll is plenty
        return self.totals()

    async def stop(self) -> None:
        stop(self.procs)
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                await proc.wait()


@dataclass
class Reading:
    at: float
    sums: dict[str, float]
    hist: Latency

    def get(self, key: str) -> float:
        return self.sums.get(key, 0)


@dataclass
class Window:
    """What the fleet saw between two readings."""

    seconds: float
    ticks: int
    latency: Latency
    writes: int

    @classmethod
    def between(cls, a: Reading, b: Reading) -> Window:
        return cls(
            b.at - a.at,
            int(b.get("ticks") - a.get("ticks")),
            b.hist.minus(a.hist),
            int(b.get("reads") - a.get("reads")),
        )

    @property
    def rate(self) -> float:
        return self.ticks / self.seconds if self.seconds > 0 else 0.0


class Rig:
    """One publisher and one or more hub replicas on loopback; subscriber fleets are added by the scenario."""

    def __init__(self, hub_ports: list[int], publisher_port: int, procs: list[Any], hubs: list[Any]) -> None:
        self.hub_ports = hub_ports
        self.publisher_port = publisher_port
        self.procs = procs
        self.hubs = hubs
        self.session = aiohttp.ClientSession()

    @property
    def hub_port(self) -> int:
        return self.hub_ports[0]

    @property
    def hub_pid(self) -> int:
        return self.hubs[0].pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.hub_port}"

    def hub_meter(self) -> CpuMeter:
        """CPU and memory of every hub replica together (and of the workers of a ``--workers`` hub)."""
        pids = [hub.pid for hub in self.hubs]
        for hub in self.hubs:
            with contextlib.suppress(psutil.Error):
                pids += [child.pid for child in psutil.Process(hub.pid).children()]
        return CpuMeter(pids)

    async def set_rate(self, rate: float) -> None:
        url = f"http://127.0.0.1:{self.publisher_port}/rate"
        # A kept-alive connection the publisher closed as it was reused: ask again (three times at most, jittered).
        async for attempt in stamina.retry_context(
            on=aiohttp.ClientConnectionError, attempts=3, wait_initial=0.05, wait_max=0.2, wait_jitter=0.15
        ):
            with attempt:
                async with self.session.post(url, json={"rate": rate}, timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    resp.raise_for_status()

    async def health(self) -> dict[str, Any]:
        return await get_json(self.session, self.url + "/health")


async def every_worker_answers(port: int, workers: int, timeout: float = 60) -> None:
    """Until ``workers`` distinct hubs have answered on ``port`` (the kernel hashes each connection to one)."""
    seen: set[str] = set()
    async with asyncio.timeout(timeout):
        while len(seen) < workers:
            async with aiohttp.ClientSession() as session:
                health = await get_json(session, f"http://127.0.0.1:{port}/health")
            seen.add(health["hub_id"])


@contextlib.asynccontextmanager
async def rig(
    kind: str, database_url: str, schema: str, replicas: int = 1, workers: int = 1, **hub_env: str
) -> AsyncIterator[Rig]:
    """``kind`` is "tickhub", "ring-sse" (benchmarks.ring_sse_hub) or "naive" (benchmarks.naive_hub);
    ``hub_env`` are extra TICKHUB_* settings for the first two. ``replicas`` tickhub hubs (each with
    ``workers`` processes on its port) share the broker of ``TICKHUB_BROKER_URL`` in ``hub_env``."""
    publisher_port, hub_ports = free_port(), [free_port() for _ in range(replicas)]
    procs: list[Any] = [spawn([PYTHON, "-m", "benchmarks.publisher", "--port", str(publisher_port)])]
    source = f"http://127.0.0.1:{publisher_port}/stream"
    env = {
        "TICKHUB_DATABASE_URL": database_url,
        "TICKHUB_DATABASE_SCHEMA": schema,  # also the hubs' namespace in Redis
        "TICKHUB_SOURCES": f"bench={source}",
        "TICKHUB_INSTRUMENTS": "none",
        "TICKHUB_MAX_STREAMS_PER_CLIENT": "100000",
        "TICKHUB_LOG_LEVEL": "warning",
        **hub_env,
    }
    hubs: list[Any] = []
    try:
        await wait_http(f"http://127.0.0.1:{publisher_port}/")
        for port in hub_ports:
            commands = {
                "tickhub": ([PYTHON, "-m", "tickhub", "hub", "--workers", str(workers)], "/ping"),
                "ring-sse": ([PYTHON, "-m", "benchmarks.ring_sse_hub", "--port", str(port)], "/health"),
                "naive": ([PYTHON, "-m", "benchmarks.naive_hub", "--port", str(port), "--source", source], "/health"),
            }
            argv, ready = commands[kind]
            hubs.append(spawn(argv, {**env, "TICKHUB_PORT": str(port)}, quiet=False))
            procs.append(hubs[-1])
            await wait_http(f"http://127.0.0.1:{port}{ready}", timeout=60)
            if workers > 1:
                await every_worker_answers(port, workers)
        the_rig = Rig(hub_ports, publisher_port, procs, hubs)
        try:
            yield the_rig
        finally:
            await the_rig.session.close()
    finally:
        stop(reversed(procs))
