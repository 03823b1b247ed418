"""Test helpers: hubs and sources on real sockets, an SSE client, a cuttable TCP proxy, waiting on conditions."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from sources.app import source_app
from sources.bridge import ExchangeBridge
from sources.feed import SourceFeed
from sources.mock import MockMarket, RandomWalk
from sources.serve import serving
from tickhub.config import Settings
from tickhub.hub import Hub
from tickhub.server import HubServer, build_server
from tickhub.wire import SSEEvent, SSEParser


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def delivered(hub: Hub) -> bool:
    """Everything the hub sequenced has reached its market, ring and composites (delivery runs a turn
    of the event loop after ingest, through the broker's log)."""
    issued = hub.sequencer.last_id if hub.sequencer is not None else None
    return issued is None or (hub.market.last_id or 0) >= issued


def written(hub: Hub) -> bool:
    """Everything the hub sequenced is delivered and in PostgreSQL."""
    return delivered(hub) and hub.writer.persisted_id >= (hub.market.last_id or 0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def bound_socket(port: int = 0, sndbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sndbuf is not None:  # accepted connections inherit it: a small one makes a stalled client block soon
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.bind(("127.0.0.1", port))
    return sock


class RunningHub:
    def __init__(self, server: HubServer, port: int) -> None:
        self.server = server
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    @property
    def hub(self) -> Hub:
        return self.server.app.state.hub


@contextlib.asynccontextmanager
async def running_hub(settings: Settings, port: int = 0, sndbuf: int | None = None) -> AsyncIterator[RunningHub]:
    """A hub under uvicorn on a real socket in this loop; stopped (drained) on exit."""
    sock = bound_socket(port, sndbuf)
    server = build_server(settings, log_level="warning")
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await wait_for(lambda: server.started or task.done(), 20, "the hub to start")
        if task.done():
            task.result()
            raise AssertionError("hub exited during start-up")
        yield RunningHub(server, sock.getsockname()[1])
    finally:
        server.request_stop()
        try:
            async with asyncio.timeout(15):
                await task
        finally:
            sock.close()


async def start_site(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Serve an aiohttp ``app`` (a test double: a fake exchange, a hostile source, a stand-in hub) on
    host:port (0 picks a free port); returns the runner (``cleanup()`` stops it) and the bound port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner, sock.getsockname()[1]


class RunningSource:
    def __init__(self, feed: SourceFeed, port: int) -> None:
        self.feed = feed
        self.port = port
        self.url = f"http://127.0.0.1:{port}/stream"


@contextlib.asynccontextmanager
async def running_mock(
    symbols: tuple[str, ...] = ("BTCUSD",),
    interval: float = 0.01,
    limit: int | None = None,
    name: str = "mock",
    ring_size: int = 100_000,
    heartbeat: float = 0.5,
    seed: int = 7,
    send_timeout: float = 30.0,
) -> AsyncIterator[RunningSource]:
    """The mock source in this loop, served by uvicorn on a real socket; stopped (streams ended) on exit."""
    import random

    rng = random.Random(seed)
    feed = SourceFeed(name, ring_size=ring_size, heartbeat=heartbeat, send_timeout=send_timeout)
    walks = {s: RandomWalk("1000.00", rng) for s in symbols}
    async with serving(source_app(feed, MockMarket(feed, walks, interval, limit).run)) as port:
        yield RunningSource(feed, port)


class RunningBridge:
    def __init__(self, bridge: ExchangeBridge, port: int) -> None:
        self.bridge = bridge
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.url = f"{self.base}/stream"


@contextlib.asynccontextmanager
async def running_bridge(bridge: ExchangeBridge) -> AsyncIterator[RunningBridge]:
    """An exchange bridge in this loop: its start-up checks, then its SSE feed served by uvicorn on a
    real socket."""
    async with bridge:
        await bridge.prepare()
        async with serving(bridge.app()) as port:
            yield RunningBridge(bridge, port)


@contextlib.asynccontextmanager
async def scripted_source(
    frames: list[bytes], heartbeat: float = 0.2, close_after: bool = False
) -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """A source that sends ``frames`` verbatim to each consumer, then heartbeats (or closes).

    Yields its URL and the list of request headers it saw (one dict per connection).
    """
    seen: list[dict[str, str]] = []

    async def stream(request: web.Request) -> web.StreamResponse:
        seen.append(dict(request.headers))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            for frame in frames:
                await response.write(frame)
            while not close_after:
                await asyncio.sleep(heartbeat)
                await response.write(b": ping\n\n")
        return response

    app = web.Application()
    app.router.add_get("/stream", stream)
    runner, port = await start_site(app)
    try:
        yield f"http://127.0.0.1:{port}/stream", seen
    finally:
        await runner.cleanup()


class SSEStream:
    """A test subscriber: an aiohttp streaming GET parsed with the wire parser."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.parser = SSEParser(max_line=1 << 22, max_event=1 << 24)
        self._pending: list[SSEEvent] = []
        self.comments = 0

    async def next(self, timeout: float = 10.0) -> SSEEvent:
        async with asyncio.timeout(timeout):
            while not self._pending:
                chunk = await self.response.content.readany()
                if not chunk:
                    raise EOFError("stream ended")
                self._pending.extend(self.parser.feed(chunk))
                self.comments = self.parser.comments
        return self._pending.pop(0)

    async def wait_comments(self, n: int, timeout: float = 10.0) -> None:
        """Read until ``n`` comment lines (heartbeats) have arrived, queueing any events."""
        async with asyncio.timeout(timeout):
            while self.parser.comments < n:
                chunk = await self.response.content.readany()
                if not chunk:
                    raise EOFError("stream ended")
                self._pending.extend(self.parser.feed(chunk))
        self.comments = self.parser.comments

    async def next_event(self, kind: str, timeout: float = 10.0) -> SSEEvent:
        while True:
            event = await self.next(timeout)
            if event.event == kind:
                return event

    async def ticks(self, n: int, timeout: float = 10.0, allow_resync: bool = False) -> list[dict[str, Any]]:
        """The next ``n`` tick events as dicts; heartbeats skipped, a ``resync`` fails unless allowed."""
        out = []
        async with asyncio.timeout(timeout):
            while len(out) < n:
                event = await self.next(timeout)
                if event.event == "resync" and not allow_resync:
                    raise AssertionError(f"unexpected resync after {len(out)} ticks: {event.data}")
                if event.event == "tick":
                    tick = orjson.loads(event.data)
                    assert tick["id"] == event.id, "SSE id and tick id differ"
                    out.append(tick)
        return out


@contextlib.asynccontextmanager
async def subscribe(base_url: str, query: str = "", last_event_id: str | None = None) -> AsyncIterator[SSEStream]:
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    timeout = aiohttp.ClientTimeout(total=None, sock_read=30)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"{base_url}/stream{query}", headers=headers) as response,
    ):
        assert response.status == 200, await response.text()
        assert response.content_type == "text/event-stream"
        yield SSEStream(response)


async def get_json(url: str, **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url, **kwargs) as response:
        return response.status, orjson.loads(await response.read())


class TcpProxy:
    """Forwards 127.0.0.1:port to a target; ``cut()`` drops every open connection mid-stream,
    ``block()`` also refuses new ones until ``unblock()`` (the target looks down); ``stall()`` keeps
    every connection open and forwards nothing until ``flow()`` (the target looks slow)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.connections = 0
        self.blocked = False
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        await self._server.wait_closed()

    def cut(self) -> None:
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()

    def block(self) -> None:
        self.blocked = True
        self.cut()

    def unblock(self) -> None:
        self.blocked = False

    def stall(self) -> None:
        self._flowing.clear()

    def flow(self) -> None:
        self._flowing.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            writer.transport.abort()
            return
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    await self._flowing.wait()
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


def via_proxy(url: str, port: int) -> str:
    """``url`` (a PostgreSQL DSN) pointed at 127.0.0.1:``port`` instead, user and path kept."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


def spawn_mock_source(
    port: int, name: str = "mock", symbols: str = "BTCUSD", interval: float = 0.01, extra: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """The mock source as its own process (for kill -9 tests)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tickhub",
            "source",
            "mock",
            "--port",
            str(port),
            "--name",
            name,
            "--symbols",
            symbols,
            "--interval",
            str(interval),
            "--heartbeat",
            "0.5",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def spawn_hub(settings: Settings, port: int, sources: str, **extra: str) -> subprocess.Popen[bytes]:
    """The hub as its own process (for SIGKILL and SIGTERM tests) on ``settings``' database."""
    env = {
        **os.environ,
        "TICKHUB_DATABASE_URL": settings.database_url or "",
        "TICKHUB_DATABASE_SCHEMA": settings.database_schema,
        "TICKHUB_DATA_DIR": settings.data_dir,
        "TICKHUB_PORT": str(port),
        "TICKHUB_SOURCES": sources,
        "TICKHUB_RECONNECT_MIN": "0.05",
        "TICKHUB_RECONNECT_MAX": "0.5",
        "TICKHUB_WRITER_FLUSH_INTERVAL": "0.005",
        "TICKHUB_HEARTBEAT": "0.5",
        "TICKHUB_LOG_LEVEL": "warning",
        "TICKHUB_INSTRUMENTS": "none",  # tests count the sources' own ticks
        **{f"TICKHUB_{name.upper()}": value for name, value in extra.items()},
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tickhub", "hub"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def free_port_block(n: int) -> int:
    """A base port such that base..base+n-1 are free right now (the demo uses consecutive ports)."""
    for _ in range(100):
        base = free_port()
        if base + n > 65535:
            continue
        socks = []
        try:
            for port in range(base, base + n):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no block of free ports")


def alive(pid: int) -> bool:
    """Running and not a zombie (an exited daemon may wait a moment for init to reap it)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class DemoRun:
    """``tickhub demo`` as a process of its own: its output collected line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.output: list[str] = []
        self.up = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.output.append(line.decode(errors="replace"))
            if "demo market is up" in self.output[-1]:
                self.up.set()

    @property
    def text(self) -> str:
        return "".join(self.output)

    def descendants(self) -> list[Any]:
        import psutil

        return psutil.Process(self.process.pid).children(recursive=True)

    async def interrupt(self, timeout: float = 30) -> int:
        """Send what Ctrl-C sends (SIGINT) and wait for the exit code."""
        self.process.send_signal(signal.SIGINT)
        async with asyncio.timeout(timeout):
            code = await self.process.wait()
            await self.reader
        return code


@contextlib.asynccontextmanager
async def running_demo(*args: str, env: dict[str, str], cwd: Any, ready_timeout: float = 90) -> AsyncIterator[DemoRun]:
    """Start ``tickhub demo ARGS``, wait for its banner; kill it on exit if the test did not stop it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tickhub",
        "demo",
        *args,
        env={**env, "PYTHONUNBUFFERED": "1"},
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    demo = DemoRun(process)
    try:
        async with asyncio.timeout(ready_timeout):
            await asyncio.wait(
                (asyncio.ensure_future(demo.up.wait()), demo.reader), return_when=asyncio.FIRST_COMPLETED
            )
        assert demo.up.is_set(), demo.text[-3000:]
        yield demo
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        demo.reader.cancel()


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
