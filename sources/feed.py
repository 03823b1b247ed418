"""SourceFeed: the numbered events every price source serves (the mock and the exchange bridges).

Events are numbered by ``seq``, which starts at the current time in microseconds, so it keeps
increasing across restarts of the source, and grows by exactly 1 per event within a run. The last
``ring_size`` events are kept: a consumer that reconnects with ``Last-Event-ID`` gets what it
missed, or everything still held if it fell further behind (it sees the jump in seq).

A consumer without ``Last-Event-ID`` starts live. With ``latest_first`` (the exchange bridges) it is
first given the newest event of each symbol, as published, with its own seq, in seq order: a picture
of every price without an event ever being published twice.

The feed knows nothing of HTTP: :meth:`SourceFeed.frames` is one consumer's stream as ready bytes
(many events joined per chunk, nothing encoded per consumer), which sources.app serves with
sse-starlette.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from tickhub.wire import TickFields, format_ts, retry_frame, source_tick_json, tick_frame

WRITE_CHUNK = 2000  # events per chunk when a consumer catches up: one send, one write
RETRY_MS = 1000  # the reconnect delay a consumer is told


def _always() -> bool:
    return True


class SourceFeed:
    """Numbered tick events, a replay ring, and each consumer's stream of them.

    ``heartbeat``: seconds between comment lines on a quiet stream; ``send_timeout``: seconds a
    consumer may leave a chunk unread before its stream is closed (it resumes by Last-Event-ID), so
    one that stopped reading cannot hold a producer waiting in :meth:`wait_for_room`.
    """

    def __init__(
        self,
        name: str,
        ring_size: int = 100_000,
        heartbeat: float = 5.0,
        first_seq: int | None = None,
        latest_first: bool = False,
        send_timeout: float = 30.0,
    ):
        self.name = name
        self.latest_first = latest_first
        self._newest: dict[str, tuple[int, bytes]] = {}  # per symbol, its newest event (latest_first)
        self.capacity = ring_size
        self.heartbeat = heartbeat
        self.send_timeout = send_timeout
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

    def publish(
        self,
        symbol: str,
        price: str,
        ts: datetime | str | None = None,
        fields: Mapping[str, str | None] | TickFields | None = None,
    ) -> int:
        """Append one tick event; returns its seq. ``fields``: the optional ones the source has (size,
        side, trade id, best quote; see tickhub.wire), by name or as TickFields, already validated."""
        seq = self.next_seq
        self.next_seq = seq + 1
        if ts is None:
            ts = datetime.now(UTC)
        ts_text = ts if isinstance(ts, str) else format_ts(ts)
        frame = tick_frame(seq, source_tick_json(self.name, symbol, price, ts_text, seq, fields))
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

    async def frames(self, last_event_id: str | None, connected: Callable[[], bool] = _always) -> AsyncIterator[bytes]:
        """One consumer's stream as ready bytes: ``retry:``, then from ``last_event_id`` (or, without one,
        live after the newest event of each symbol if ``latest_first``), up to WRITE_CHUNK events a chunk;
        it ends when the feed closes or ``connected()`` turns false.

        The consumer's cursor moves when a chunk has been handed on (the generator resumes after its
        send), which is what :meth:`wait_for_room` holds a fast producer to.
        """
        seq = self.start_seq(last_event_id)
        newest = self.newest_frames() if not last_event_id else b""  # taken with seq: no event missed or sent twice
        key = object()
        self._advance(key, seq)
        try:
            yield retry_frame(RETRY_MS) + newest
            # connected() is checked, not left to cancellation: a producer that publishes every turn of the
            # loop resolves this consumer's waiter each turn, and anyio never cancels a task whose waiter is
            # resolved, so a gone consumer's stream would run on, sending into the void.
            while not self.closing and connected():
                if seq < self.oldest_seq:
                    seq = self.oldest_seq  # fell out of the ring: the consumer sees the jump in seq
                if seq < self.next_seq:
                    end = min(self.next_seq, seq + WRITE_CHUNK)
                    yield self.collect(seq, end)
                    seq = end
                    self._advance(key, seq)
                else:
                    await self._wait_new(seq, self.heartbeat)
        finally:
            self._cursors.pop(key, None)
            self._wake_producer()

    def info(self) -> dict[str, Any]:
        """The ``/`` document: the feed's name and where its seqs stand."""
        return {
            "name": self.name,
            "first_seq": self.first_seq,
            "next_seq": self.next_seq,
            "oldest_seq": self.oldest_seq,
            "consumers": self.consumers,
        }

    def close(self) -> None:
        """End every consumer's stream (each ends cleanly after what it was sent) and free the producer."""
        self.closing = True
        for waiter in self._waiters + self._progress:
            if not waiter.done():
                waiter.set_result(None)
