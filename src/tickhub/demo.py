"""``tickhub demo``: a whole local market under one supervisor.

Start order: embedded PostgreSQL (unless TICKHUB_DATABASE_URL is set) → three mock sources (or,
with ``--live VENUE``, one exchange bridge) → the hub → two bots, "investor" and "hamster", each
with a fresh API key. Each child runs in its own session, so a terminal's Ctrl-C reaches only the
supervisor, which then stops the children in reverse order: SIGTERM, a grace period, and SIGKILL
through the process handle if one still lingers. Children also get SIGTERM if the supervisor itself
dies (PR_SET_PDEATHSIG), so nothing is left behind either way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import aiohttp

from . import aio
from .backoff import Backoff
from .config import Settings
from .embedded import database_url
from .wire import SSEParser

READY_TIMEOUT = 60.0
STOP_GRACE = 10.0
TICKER_EVERY = 5.0

DEMO_BOTS = ("investor", "hamster")
DEMO_CASH = Decimal(10000)

DEMO_SOURCES = (
    ("mock-btc", "BTCUSD", "43000.00"),
    ("mock-tcsg", "TCSG", "3000.00"),
    ("mock-meta", "META", "480.00"),
)
#: ``tickhub demo --live VENUE``: one exchange bridge (public market data, no keys) instead of the mocks.
LIVE_SYMBOLS = {"binance": "BTCUSDT,ETHUSDT", "coinbase": "BTC-USD,ETH-USD", "kraken": "BTC/USD,ETH/USD"}


def hub_symbols(live: str | None) -> list[str]:
    """The symbols the demo's sources put on the hub stream (bridges qualify them with the venue)."""
    if live is None:
        return [symbol for _, symbol, _ in DEMO_SOURCES]
    return [f"{live.upper()}:{pair.replace('/', '-')}" for pair in LIVE_SYMBOLS[live].split(",")]


def _die_with_parent() -> None:
    """Runs in the child before exec: ask the kernel to SIGTERM it when the supervisor dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str
    argv: Sequence[str]
    env: dict[str, str] = field(default_factory=dict)
    ready_url: str | None = None
    #: Ready once it prints a line holding this (several children serving one port cannot be asked apart).
    ready_line: str | None = None
    process: asyncio.subprocess.Process | None = None
    pump: asyncio.Task[None] | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class Supervisor:
    """Starts children in order, prefixes their output with their name, stops them in reverse."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.width = 10

    async def start(self, child: Child) -> None:
        env = {**os.environ, **child.env, "PYTHONUNBUFFERED": "1"}
        child.process = await asyncio.create_subprocess_exec(
            *child.argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.children.append(child)
        child.pump = asyncio.create_task(self._pump(child))
        if child.ready_line:
            await self._wait_ready_line(child)
        elif child.ready_url:
            await self._wait_ready(child)

    async def _pump(self, child: Child) -> None:
        assert child.process is not None and child.process.stdout is not None
        prefix = f"{child.name:<{self.width}}| "
        async for line in child.process.stdout:
            text = line.decode(errors="replace")
            if child.ready_line is not None and child.ready_line in text:
                child.ready.set()
                continue
            sys.stdout.write(prefix + text)
            sys.stdout.flush()

    async def _wait_ready(self, child: Child) -> None:
        assert child.process is not None and child.ready_url is not None
        deadline = time.monotonic() + READY_TIMEOUT
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while time.monotonic() < deadline:
                if child.process.returncode is not None:
                    raise RuntimeError(f"{child.name} exited with code {child.process.returncode} while starting")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(child.ready_url) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{child.name} was not ready at {child.ready_url} within {READY_TIMEOUT:.0f}s")

    async def _wait_ready_line(self, child: Child) -> None:
        assert child.process is not None
        ready = asyncio.ensure_future(child.ready.wait())
        exited = asyncio.ensure_future(child.process.wait())
        try:
            await asyncio.wait((ready, exited), timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            exited.cancel()
        if not child.ready.is_set():
            if child.process.returncode is not None:
                raise RuntimeError(f"{child.name} exited with code {child.process.returncode} while starting")
            raise RuntimeError(f"{child.name} did not start within {READY_TIMEOUT:.0f}s")

    async def wait_any_exit(self) -> Child:
        """Return the first child that exits."""
        waits = {asyncio.create_task(c.process.wait()): c for c in self.children if c.process is not None}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            return waits[next(iter(done))]
        finally:
            for task in waits:
                task.cancel()

    async def stop(self) -> None:
        for child in reversed(self.children):
            proc = child.process
            if proc is None:
                continue
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(STOP_GRACE):
                        await proc.wait()
                except TimeoutError:
                    print(f"demo: {child.name} did not stop within {STOP_GRACE:.0f}s; killing it", flush=True)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
                if proc.returncode != 0:
                    print(f"demo: {child.name} stopped with exit code {proc.returncode}", flush=True)
            if child.pump is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2):
                        await child.pump
        self.children.clear()


async def demo_keys(settings: Settings, db_url: str) -> dict[str, str]:
    """An API key for each demo bot: its account is created once, then gets a fresh key each run."""
    from .accounts import AccountExists, Accounts
    from .store import Store

    store = await Store.open(db_url, settings.database_schema, 2, settings.db_timeout)
    try:
        accounts, keys = Accounts(store), {}
        for name in DEMO_BOTS:
            try:
                keys[name] = await accounts.create(name, DEMO_CASH)
            except AccountExists:
                keys[name] = await accounts.issue_key(name, revoke_others=True)
        return keys
    finally:
        await store.close()


def bot_children(settings: Settings, keys: dict[str, str], live: str | None = None, replicas: int = 1) -> list[Child]:
    """One child per bot; with several replicas each bot follows another one."""
    symbols = ",".join(hub_symbols(live))
    return [
        Child(
            name,
            [
                sys.executable,
                "-m",
                "tickhub",
                "bot",
                name,
                "--symbols",
                symbols,
                "--hub",
                hub_url(settings, i % replicas),
            ],
            env={"TICKHUB_API_KEY": key},
        )
        for i, (name, key) in enumerate(keys.items())
    ]


def hub_url(settings: Settings, replica: int = 0) -> str:
    return f"http://{settings.host}:{settings.port + replica}"


def live_source(venue: str, host: str, port: int) -> Child:
    """The exchange bridge for ``--live``; ready once it has checked its symbols with the exchange."""
    argv = [sys.executable, "-m", "tickhub", "source", venue, "--symbols", LIVE_SYMBOLS[venue]]
    return Child(venue, [*argv, "--host", host, "--port", str(port)], ready_url=f"http://{host}:{port}/")


def demo_children(
    settings: Settings,
    db_url: str,
    interval: float,
    live: str | None = None,
    replicas: int = 1,
    broker_url: str | None = None,
    workers: int = 1,
) -> list[Child]:
    """The sources, then the hub (or ``replicas`` hubs on consecutive ports, or ``workers`` on one port,
    sharing ``broker_url``)."""
    python = sys.executable
    host, port = settings.host, settings.port
    children = []
    urls = []
    first_source = port + (1 if replicas == 1 else 10)  # replicas take port .. port + replicas - 1
    if live is not None:
        children.append(live_source(live, host, first_source))
        urls.append(f"{live}=http://{host}:{first_source}/stream")
    for offset, (name, symbol, start) in enumerate(DEMO_SOURCES if live is None else ()):
        source_port = first_source + offset
        children.append(
            Child(
                name,
                [
                    python,
                    "-m",
                    "tickhub",
                    "source",
                    "mock",
                    "--name",
                    name,
                    "--symbols",
                    symbol,
                    "--start",
                    f"{symbol}={start}",
                    "--port",
                    str(source_port),
                    "--host",
                    host,
                    "--interval",
                    str(interval),
                ],
                ready_url=f"http://{host}:{source_port}/",
            )
        )
        urls.append(f"{name}=http://{host}:{source_port}/stream")
    for replica in range(replicas):
        env = {
            "TICKHUB_DATABASE_URL": db_url,
            "TICKHUB_SOURCES": ",".join(urls),
            "TICKHUB_HOST": host,
            "TICKHUB_PORT": str(port + replica),
        }
        if broker_url is not None:
            env["TICKHUB_BROKER_URL"] = broker_url
        name = "hub" if replicas == 1 else f"hub-{replica}"
        argv = [python, "-m", "tickhub", "hub"] + (["--workers", str(workers)] if workers > 1 else [])
        children.append(Child(name, argv, env=env, ready_url=f"http://{host}:{port + replica}/ping"))
    return children


async def market_ticker(base_url: str, every: float = TICKER_EVERY) -> None:
    """Print one line of latest prices every few seconds, read from the hub's own /stream."""
    import orjson

    prices: dict[str, str] = {}
    shown: dict[str, str] = {}
    backoff = Backoff(0.5, 5.0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60)
    loop = asyncio.get_running_loop()
    next_print = loop.time() + every
    while True:
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session, session.get(f"{base_url}/stream") as resp:
                parser = SSEParser()
                async for chunk in resp.content.iter_any():
                    for event in parser.feed(chunk):
                        ticks = orjson.loads(event.data)["ticks"] if event.event == "snapshot" else None
                        for tick in ticks or ([orjson.loads(event.data)] if event.event == "tick" else []):
                            prices[tick["symbol"]] = tick["price"]
                    backoff.reset()
                    if loop.time() >= next_print and prices:
                        next_print = loop.time() + every
                        print("market    | " + _ticker_line(prices, shown), flush=True)
                        shown = dict(prices)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            await asyncio.sleep(backoff.next_delay())


def _ticker_line(prices: dict[str, str], before: dict[str, str]) -> str:
    parts = []
    for symbol in sorted(prices):
        now, was = prices[symbol], before.get(symbol)
        arrow = " " if was is None or float(now) == float(was) else ("▲" if float(now) > float(was) else "▼")
        parts.append(f"{symbol} {now} {arrow}")
    return "   ".join(parts)


def banner(settings: Settings, replicas: int = 1) -> str:
    base = hub_url(settings)
    lines = ["", "  tickhub demo market is up" + (f": {replicas} hub replicas sharing Redis" if replicas > 1 else "")]
    lines.append(f"    dashboard {base}/")
    for replica in range(replicas):
        url = hub_url(settings, replica)
        suffix = "" if replicas == 1 else f"   (replica {replica}: {url}/health shows its role)"
        lines.append(f"    stream   curl -N {url}/stream{suffix}")
    lines += [f"    prices   {base}/prices", f"    health   {base}/health", "  Ctrl-C stops everything.", ""]
    return "\n".join(lines)


async def _demo(
    settings: Settings,
    db_url: str,
    interval: float,
    bots: bool,
    live: str | None = None,
    replicas: int = 1,
    broker_url: str | None = None,
    workers: int = 1,
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    supervisor = Supervisor()
    ticker: asyncio.Task[None] | None = None
    code = 0
    try:
        for child in demo_children(settings, db_url, interval, live, replicas, broker_url, workers):
            if stop.is_set():
                break
            await supervisor.start(child)
        if bots and not stop.is_set():
            for child in bot_children(settings, await demo_keys(settings, db_url), live, replicas):
                await supervisor.start(child)
        if not stop.is_set():
            print(banner(settings, replicas), flush=True)
            ticker = asyncio.create_task(market_ticker(hub_url(settings)))
            stopper = asyncio.create_task(stop.wait())
            exited = asyncio.create_task(supervisor.wait_any_exit())
            done, _ = await asyncio.wait({stopper, exited}, return_when=asyncio.FIRST_COMPLETED)
            for task in (stopper, exited):
                task.cancel()
            if exited in done and not exited.cancelled():
                child = exited.result()
                print(f"demo: {child.name} exited unexpectedly (code {child.process.returncode}); stopping", flush=True)
                code = 1
    except RuntimeError as exc:
        print(f"demo: {exc}", flush=True)
        code = 1
    finally:
        print("demo: stopping", flush=True)
        if ticker is not None:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
        await supervisor.stop()
    print("demo: stopped", flush=True)
    return code


def run_demo(settings: Settings, args: argparse.Namespace) -> int:
    replicas = getattr(args, "replicas", 1)
    workers = getattr(args, "workers", 1)
    if replicas > 1 and workers > 1:
        print("demo: --replicas (a port each) or --workers (one port), not both", file=sys.stderr)
        return 2
    broker_url = None
    if replicas > 1 or workers > 1:
        broker_url = settings.broker_url if settings.broker_url.startswith("redis") else CLUSTER_REDIS
        problem = redis_problem(broker_url)
        if problem is not None:
            print(
                f"demo: {max(replicas, workers)} hubs share a Redis stream, and Redis at {broker_url} is not reachable "
                f"({problem}). Start one (redis-server) or set TICKHUB_BROKER_URL=redis://host:port/db.",
                file=sys.stderr,
            )
            return 2
    with database_url(settings.database_url, settings.data_dir) as url:
        live = getattr(args, "live", None)
        return aio.run(_demo(settings, url, args.interval, not args.no_bots, live, replicas, broker_url, workers))


CLUSTER_REDIS = "redis://127.0.0.1:6379/0"


def redis_problem(url: str) -> str | None:
    """Why Redis at ``url`` cannot be used, or None if it answers."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError) as exc:
        return str(exc)
    return None
