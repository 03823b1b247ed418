"""``tickhub hub --workers N``: N hub replicas on one port, one per core.

Each worker is a process of its own (``tickhub hub --reuse-port``) binding the same port with
``SO_REUSEPORT``, so the kernel spreads new connections over them; they share the tick log through
Redis (``TICKHUB_BROKER_URL=redis://…``): one holds the ingest lease, every one fans out to its own
subscribers and resumes any id. ``memory://`` cannot serve: its log is one process's memory, and a
second process would have a log (and a lease) of its own.

The supervisor only starts, watches and stops: a worker that exits on its own is started again after
a capped, jittered delay (its subscribers reconnect to the others meanwhile); SIGINT or SIGTERM stops
every worker (each drains as a single hub does) and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from urllib.parse import urlsplit

from .backoff import Backoff
from .config import Settings, SettingsError
from .demo import Child, Supervisor

#: What a worker prints once it serves (tickhub.cli prints it; the supervisor waits for it).
WORKER_READY = "tickhub: worker ready"

RESTART_MIN = 0.5
RESTART_MAX = 10.0


def check_broker(settings: Settings, workers: int) -> None:
    """Workers share their log through Redis; refuse ``memory://`` with the reason, in one line."""
    if workers > 1 and urlsplit(settings.broker_url).scheme not in ("redis", "rediss", "unix"):
        raise SettingsError(
            f"--workers {workers} needs TICKHUB_BROKER_URL=redis://host:port/db: each worker is a process, and "
            "processes share the tick log only through Redis (memory:// is one process's memory)"
        )


def worker_child(settings: Settings, number: int) -> Child:
    env = {"TICKHUB_DATABASE_URL": settings.database_url or "", "TICKHUB_PORT": str(settings.port)}
    argv = [sys.executable, "-m", "tickhub", "hub", "--reuse-port"]
    return Child(f"worker-{number}", argv, env=env, ready_line=WORKER_READY)


async def supervise(settings: Settings, workers: int) -> int:
    """Run ``workers`` hub processes on ``settings.port`` until SIGINT or SIGTERM; 0 on a clean stop."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    supervisor = Supervisor()
    backoff = Backoff(RESTART_MIN, RESTART_MAX)
    try:
        for number in range(workers):
            await supervisor.start(worker_child(settings, number))
        print(f"tickhub: {workers} hub workers on {settings.host}:{settings.port}", flush=True)
        while not stopping.is_set():
            exited = asyncio.ensure_future(supervisor.wait_any_exit())
            stop = asyncio.ensure_future(stopping.wait())
            try:
                await asyncio.wait((exited, stop), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (exited, stop):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if stopping.is_set() or not exited.done() or exited.cancelled():
                break
            child = exited.result()
            supervisor.children.remove(child)
            delay = backoff.next_delay()
            print(f"tickhub: {child.name} exited with code {child.process.returncode}; restarting in {delay:.1f}s")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stopping.wait()
            if not stopping.is_set():
                await supervisor.start(worker_child(settings, int(child.name.rsplit("-", 1)[1])))
    finally:
        await supervisor.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0
