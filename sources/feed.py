"""SourceFeed: the SSE server half that every price source shares (mock and exchange bridges).

Events are numbered by ``seq``, which starts at the current time in microseconds, so it keeps
increasing across restarts of the source, and grows by exactly 1 per event within a run. The last
``ring_size`` events are kept: a consumer that reconnects with ``Last-Event-ID`` gets what it
missed, or everything still held if it fell further behind (it sees the jump in seq).

A consumer without ``Last-Event-ID`` starts live. With ``latest_first`` (the exchange bridges) it is
first given the newest event of each symbol, as published, with its own seq, in seq order: a picture
of every price without an event ever being published twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tickhub.wire import comment_frame, format_ts, retry_frame, source_tick_json, tick_frame

log = logging.getLogger("tickhub.source")

WRITE_CHUNK = 2000  # events per write when a consumer catches up
FEED = web.AppKey("feed", "SourceFeed")


class SourceFeed:
    """Numbered tick events, a replay ring and the ``GET /stream`` handler that serves them."""

    def __init__(
        self,
        name: str,
        ring_size: int = 100_000,
        heartbeat: float = 5.0,
        first_seq: int | None = None,
        latest_first: bool = False,
    ):
        self.name = name
        self.latest_first = latest_first
        self._newest: dict[str, tuple[int, bytes]] = {}  # per symbol, its newest event (latest_first)
        self.capacity = ring_size
        self.heartbeat = heartbeat
        self.first_seq = first_seq if first_seq is not None else time.time_ns() // 1000
        self.next_seq = self.first_seq
        self._frames: list[bytes] = [b""] * ring_size
        self._waiters: list[asyncio.Future[None]] = []
        self._cursors: dict[object, int] = {}  # per consumer: the next seq it will be sent
        self._progress: list[asyncio.Future[None]] = []
        self.closing = False

    @property
    def oldest_seq(self) -> int:
        return max(self.first_seq, self.next_seq - self.capacity)

    @property
    def consumers(self) -> int:
        return len(self._cursors)

    def publish(self, symbol: str, price: str, ts: datetime | str | None = None, trade_id: str | None = None) -> int:
        """Append one tick event (``trade_id``: the exchange's, if the price is a trade); returns its seq."""
        seq = self.next_seq
        self.next_seq = seq + 1
        if ts is None:
            ts = datetime.now(UTC)
        ts_text = ts if isinstance(ts, str) else format_ts(ts)
        frame = tick_frame(seq, source_tick_json(self.name, symbol, price, ts_text, seq, trade_id))
        self._frames[seq % self.capacity] = frame
        if self.latest_first:
            self._newest[symbol] = (seq, frame)
        if self._waiters:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters.clear()
        return seq

    def newest_frames(self) -> bytes:
        """The newest event of each symbol, in seq order (with ``latest_first``; else nothing)."""
        return b"".join(frame for _, frame in sorted(self._newest.values()))

    def collect(self, low: int, high: int) -> bytes:
        cap = self.capacity
        return b"".join(self._frames[s % cap] for s in range(low, high))

    def start_seq(self, last_event_id: str | None) -> int:
        """The first seq to send a consumer that last saw ``last_event_id``."""
        if last_event_id is None or not (last_event_id.strip().isascii() and last_event_id.strip().isdigit()):
            return self.next_seq
        last = int(last_event_id)
        if last >= self.next_seq:
            return self.next_seq  # an id we never issued (e.g. from a run with a clock ahead): live
        return max(last + 1, self.oldest_seq)

    async def _wait_new(self, seq: int, timeout: float) -> bool:
        if self.next_seq > seq:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            return False
        return True

    async def wait_for_room(self) -> None:
        """Block while a consumer is more than half a ring behind, or there is none.

        Used by producers that emit as fast as they can, so a benchmark loses nothing.
        """
        limit = self.capacity // 2
        while not self.closing and (not self._cursors or min(self._cursors.values()) < self.next_seq - limit):
            waiter = asyncio.get_running_loop().create_future()
            self._progress.append(waiter)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await waiter

    def _advance(self, key: object, seq: int) -> None:
        self._cursors[key] = seq
        self._wake_producer()

    def _wake_producer(self) -> None:
        if self._progress:
            for waiter in self._progress:
                if not waiter.done():
                    waiter.set_result(None)
            self._progress.clear()

    async def handle_stream(self, request: web.Request) -> web.StreamResponse:
        """``GET /stream``: text/event-stream from Last-Event-ID (header or ``?last_event_id=``); without
        one, live, after the newest event of each symbol if ``latest_first``."""
        last = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        seq = self.start_seq(last)
        newest = self.newest_frames() if not last else b""  # taken with seq: no event missed or sent twice
        key = object()
        self._advance(key, seq)
        try:
            await response.write(retry_frame(1000) + newest)
            while not self.closing:
                if seq < self.oldest_seq:
                    seq = self.oldest_seq  # fell out of the ring: the consumer sees the jump in seq
                if seq < self.next_seq:
                    end = min(self.next_seq, seq + WRITE_CHUNK)
                    await response.write(self.collect(seq, end))
                    seq = end
                    self._advance(key, seq)
                elif not await self._wait_new(seq, self.heartbeat):
                    await response.write(comment_frame("ping"))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._cursors.pop(key, None)
            self._wake_producer()
        return response

    async def handle_info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "name": self.name,
                "first_seq": self.first_seq,
                "next_seq": self.next_seq,
                "oldest_seq": self.oldest_seq,
                "consumers": self.consumers,
            }
        )

    def close(self) -> None:
        self.closing = True
        for waiter in self._waiters + self._progress:
            if not waiter.done():
                waiter.set_result(None)


def source_app(feed: SourceFeed, producer: Callable[[], Awaitable[None]] | None = None, **info: Any) -> web.Application:
    """An aiohttp app serving ``feed`` at ``/stream`` (and ``/`` for info), running ``producer``."""
    app = web.Application()
    app[FEED] = feed
    app.router.add_get("/stream", feed.handle_stream)
    app.router.add_get("/", feed.handle_info)

    async def run_producer(app: web.Application) -> Any:
        task = asyncio.create_task(producer()) if producer is not None else None
        yield
        feed.close()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.cleanup_ctx.append(run_producer)
    app.on_shutdown.append(lambda app: _close_feed(feed))
    return app


async def _close_feed(feed: SourceFeed) -> None:
    feed.close()


async def start_site(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on host:port (0 picks a free port); returns the runner and the bound port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner, sock.getsockname()[1]


async def serve_until_signal(app: web.Application, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM, then shut down cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner, bound = await start_site(app, host, port)
    log.info("source %s serving on http://%s:%d/stream", app[FEED].name, host, bound)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
