"""What every benchmark scenario shares: processes, ports, latency histograms, CPU and memory readings."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import resource
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field

import aiohttp
import asyncpg
import psutil

PYTHON = sys.executable
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"

# -- latency histogram -----------------------------------------------------------------------------
# Buckets of 0.05 ms up to 50 ms, then 1 ms up to 2 s, then one overflow bucket: fine where the
# targets are (p99 < 20 ms, < 100 ms) and small enough to ship as a JSON list every half second.
FINE_STEP, FINE_MS = 0.05, 50.0
COARSE_STEP, COARSE_MS = 1.0, 2000.0
N_FINE = int(FINE_MS / FINE_STEP)
N_BUCKETS = N_FINE + int((COARSE_MS - FINE_MS) / COARSE_STEP) + 1


def bucket_of(ms: float) -> int:
    if ms < FINE_MS:
        return max(0, int(ms / FINE_STEP))
    return min(N_BUCKETS - 1, N_FINE + int((ms - FINE_MS) / COARSE_STEP))


def bucket_upper_ms(i: int) -> float:
    """The upper edge of bucket ``i``: percentiles are reported as upper bounds."""
    if i < N_FINE:
        return (i + 1) * FINE_STEP
    if i == N_BUCKETS - 1:
        return math.inf
    return FINE_MS + (i - N_FINE + 1) * COARSE_STEP


@dataclass
class Latency:
    """A latency histogram (counts per bucket) with percentiles; subtracts to give a window."""

    counts: list[int] = field(default_factory=lambda: [0] * N_BUCKETS)
    max_ms: float = 0.0

    def add(self, other: Sequence[int]) -> None:
        for i, n in enumerate(other):
            if n:
                self.counts[i] += n

    def minus(self, earlier: Latency) -> Latency:
        return Latency([a - b for a, b in zip(self.counts, earlier.counts, strict=True)], self.max_ms)

    @property
    def total(self) -> int:
        return sum(self.counts)

    def percentile(self, p: float) -> float:
        total = self.total
        if not total:
            return math.nan
        rank = math.ceil(total * p / 100)
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return bucket_upper_ms(i)
        return math.inf

    @property
    def highest_ms(self) -> float:
        for i in range(N_BUCKETS - 1, -1, -1):
            if self.counts[i]:
                return bucket_upper_ms(i)
        return math.nan


# -- processes -------------------------------------------------------------------------------------


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(argv: list[str], env: dict[str, str] | None = None, quiet: bool = True) -> subprocess.Popen[bytes]:
    """A child process in its own process group, stdout discarded, stderr passed through unless quiet."""
    return subprocess.Popen(
        argv,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL if quiet else None,
        start_new_session=True,
    )


def stop(procs: Iterable[subprocess.Popen[bytes] | asyncio.subprocess.Process], timeout: float = 10.0) -> None:
    """SIGTERM every process, wait for each, SIGKILL what is still alive after ``timeout``."""
    procs = list(procs)
    for proc in procs:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
    deadline = time.monotonic() + timeout
    for proc in procs:
        pid = proc.pid
        while psutil.pid_exists(pid) and time.monotonic() < deadline:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                proc.kill()
        if isinstance(proc, subprocess.Popen):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(2)


async def wait_http(url: str, timeout: float = 30.0) -> None:
    """Wait until ``url`` answers 200."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")
            await asyncio.sleep(0.05)


async def get_json(session: aiohttp.ClientSession, url: str) -> dict:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
        return await resp.json()


class CpuMeter:
    """CPU seconds and resident memory of a set of processes between two readings."""

    def __init__(self, pids: Iterable[int]) -> None:
        self.procs = [psutil.Process(pid) for pid in pids]
        self._cpu0 = self.cpu()
        self._t0 = time.perf_counter()

    def cpu(self) -> float:
        total = 0.0
        for proc in self.procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def rss(self) -> int:
        total = 0
        for proc in self.procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total

    def restart(self) -> None:
        self._cpu0, self._t0 = self.cpu(), time.perf_counter()

    def percent(self) -> float:
        """CPU used since the last (re)start, in % of one core."""
        elapsed = time.perf_counter() - self._t0
        return 100 * (self.cpu() - self._cpu0) / elapsed if elapsed > 0 else 0.0


# -- PostgreSQL ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def fresh_schema(database_url: str, prefix: str) -> AsyncIterator[str]:
    """A schema name of its own for one run; dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')  # a generated identifier, not data
        finally:
            await conn.close()


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
