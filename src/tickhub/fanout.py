"""Fan-out: one flusher hands each coalesced batch of frames to every subscriber in turn.

Per-subscriber tasks that wake on every tick are the cost to avoid, so idle subscribers are
grouped by (ring position, symbol filter); each group's batch is joined once and written to each
member by starting its ``write`` coroutine and driving it by hand. A write that completes without
suspending (the usual case: the socket buffer has room) costs no task switch. A write that
suspends (the client is not reading) moves that subscriber to a task of its own that finishes the
write and catches up from the ring, so one stalled client never delays the others; if it falls
more than ``backlog_limit`` bytes behind it is resynced from a snapshot, and after
``max_overflows`` resyncs, or a write blocked for ``write_timeout`` seconds, it is disconnected.
Knows nothing of HTTP: a subscriber is a pair of callables returning awaitables.

A subscriber's position only moves to where everything before it has been written to it (or
handed to its write in flight), or to the head through an explicit ``resync`` and a snapshot; every
path that moves one (flush, catch-up, heartbeat, resync) keeps to that, so no tick is ever skipped
in silence. tests/test_fanout_stateful.py checks it under random interleavings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import orjson

from .ring import TickRing
from .subscriber import Subscriber, SymbolFilter, abort, chunk, start_write
from .wire import comment_frame, event_frame

__all__ = ["FLUSH_SLICE", "Fanout", "Subscriber", "SymbolFilter", "resync_frame"]

log = logging.getLogger("tickhub.fanout")

#: The longest ``Last-Event-ID`` a resync echoes back, in characters (ids the hub issues are shorter).
MAX_ECHOED_ID = 64

#: Longest the flusher writes before it lets the event loop run other work, in seconds.
FLUSH_SLICE = 0.002


class _Batch(NamedTuple):
    """A flush in progress: the subscribers still to write, what to write, and where they go next."""

    subs: list[Subscriber]
    data: bytes
    target: set[Subscriber]
    head: int


class Fanout:
    """Owns the subscribers, the flusher task, the heartbeat task and the slow-subscriber tasks."""

    #: A budgeted flush looks at the clock once every ``slice_mask + 1`` subscribers (a power of two).
    slice_mask = 63

    def __init__(
        self,
        ring: TickRing,
        snapshot: Callable[[SymbolFilter], bytes],
        backlog_limit: int = 1 << 20,
        max_overflows: int = 3,
        write_timeout: float = 30.0,
        heartbeat: float = 15.0,
    ) -> None:
        self.ring = ring
        self.snapshot = snapshot
        self.backlog_limit = backlog_limit
        self.max_overflows = max_overflows
        self.write_timeout = write_timeout
        self.heartbeat = heartbeat
        # cursor -> symbol filter -> subscribers that are fully written up to that cursor
        self._idle: dict[int, dict[SymbolFilter, set[Subscriber]]] = {}
        self._busy: dict[Subscriber, asyncio.Task[None]] = {}
        self._work: list[_Batch] = []  # a flush cut into slices, still to finish
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.closing = False
        self.writes = 0
        self.bytes_out = 0
        self.deliveries = 0  # ticks written, counted once per subscriber
        self.resyncs = 0
        self.slow_disconnects = 0

    # -- ingest side ------------------------------------------------------------------------

    def publish(self, tick_id: int, symbol: str, frame: bytes) -> None:
        self.ring.append(tick_id, symbol, frame)
        self._wake.set()

    # -- subscriber lifecycle ---------------------------------------------------------------

    @property
    def count(self) -> int:
        idle = sum(len(s) for g in self._idle.values() for s in g.values())
        in_flush = sum(1 for w in self._work for sub in w.subs if not sub.detached)
        return idle + in_flush + len(self._busy)

    @property
    def busy_count(self) -> int:
        return len(self._busy)

    def backlog_bytes(self) -> int:
        """Bytes the blocked subscribers are behind the ring head, summed."""
        return sum(self.ring.backlog_bytes(sub.cursor) for sub in self._busy)

    def attach(self, sub: Subscriber, cursor: int, prelude: bytes = b"") -> None:
        """Start delivering to ``sub`` from ring position ``cursor``, after ``prelude``."""
        if self.closing:
            self._close(sub, "shutdown")
            return
        sub.cursor = cursor
        self._deliver(sub, prelude)

    def detach(self, sub: Subscriber) -> None:
        """Forget ``sub`` (its client went away or its handler ended)."""
        sub.detached = True  # skipped if a sliced flush still holds it
        task = self._busy.pop(sub, None)
        if task is not None:
            task.cancel()
        for group in self._idle.values():
            subs = group.get(sub.symbols)
            if subs is not None:
                subs.discard(sub)

    def _add_idle(self, sub: Subscriber, cursor: int) -> None:
        sub.busy = False
        self._idle.setdefault(cursor, {}).setdefault(sub.symbols, set()).add(sub)
        if cursor != self.ring.head:
            self._wake.set()

    def _deliver(self, sub: Subscriber, data: bytes) -> None:
        """Write ``data`` then bring ``sub`` up to the ring head, in its own task only if it blocks."""
        pending: Awaitable[None] | None = None
        if data:
            try:
                pending = start_write(sub.write(data))
            except Exception as exc:
                self._close(sub, f"write failed: {exc}")
                return
        if pending is None and sub.cursor >= self.ring.start:
            self._add_idle(sub, sub.cursor)  # the flusher brings it to the head with its group
            return
        self._block(sub, sub.cursor, pending)

    async def _catch_up(self, sub: Subscriber, pending: Awaitable[None] | None) -> None:
        ring = self.ring
        try:
            while True:
                if pending is not None:
                    async with asyncio.timeout(self.write_timeout):
                        await pending
                if self.closing:
                    return
                cursor = sub.cursor
                if sub.resync is not None:  # the stream lost continuity while this write was blocked
                    reason, sub.resync = sub.resync, None
                    self.resyncs += 1
                    sub.cursor = ring.head
                    data = resync_frame(reason) + self.snapshot(sub.symbols)
                elif cursor < ring.start or ring.backlog_bytes(cursor) > self.backlog_limit:
                    sub.overflows += 1
                    self.resyncs += 1
                    if sub.overflows >= self.max_overflows:
                        self.slow_disconnects += 1
                        log.info("disconnecting a subscriber after %d backlog overflows", sub.overflows)
                        await self._finish(sub, "slow_consumer")
                        return
                    sub.cursor = ring.head
                    data = resync_frame("slow_consumer") + self.snapshot(sub.symbols)
                else:
                    head = ring.head
                    data, frames = ring.collect_counted(cursor, head, sub.symbols)
                    sub.cursor = head
                    if not data:
                        break
                    self.deliveries += frames
                self.writes += 1
                self.bytes_out += len(data)
                pending = start_write(sub.write(data))
        except TimeoutError:
            self.slow_disconnects += 1
            log.info("disconnecting a subscriber whose write blocked for %.1fs", self.write_timeout)
            self._busy.pop(sub, None)
            abort(sub)
            self._close(sub, "write_timeout")
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._busy.pop(sub, None)
            self._close(sub, f"write failed: {exc}")
            return
        self._busy.pop(sub, None)
        self._add_idle(sub, sub.cursor)

    async def _finish(self, sub: Subscriber, reason: str) -> None:
        """End the response cleanly (the client sees the stream close and reconnects)."""
        self._busy.pop(sub, None)
        try:
            pending = start_write(sub.finish())
            if pending is not None:
                async with asyncio.timeout(1.0):
                    await pending
        except Exception:  # the end did not get through (a full socket): drop the connection instead
            abort(sub)
        self._close(sub, reason)

    def _close(self, sub: Subscriber, reason: str) -> None:
        self.detach(sub)
        if not sub.closed.done():
            sub.closed.set_result(reason)

    def resync_all(self, reason: str) -> None:
        """Deliver what the ring holds, then empty it and start every subscriber again from a resync
        and a fresh snapshot: what comes next does not follow on from what they were sent."""
        self.flush()
        self.ring.clear()
        for sub in self._busy:  # blocked: resynced by its own task once the write in flight is done
            sub.resync = reason
        groups, self._idle = self._idle, {}
        for by_filter in groups.values():
            for subs in by_filter.values():
                for sub in subs:
                    sub.cursor = self.ring.head
                    self.resyncs += 1
                    self._deliver(sub, resync_frame(reason) + self.snapshot(sub.symbols))

    # -- the flusher ------------------------------------------------------------------------

    def _take_batch(self) -> None:
        """Collect, for each group of idle subscribers, everything appended since their cursor."""
        ring = self.ring
        head = ring.head
        groups = self._idle
        if not groups or (len(groups) == 1 and head in groups):
            return
        self._idle = merged = {head: {}}
        target_groups = merged[head]
        for cursor, by_filter in groups.items():
            for key, subs in by_filter.items():
                target = target_groups.setdefault(key, set())
                if cursor == head or not subs:
                    target |= subs
                    continue
                if cursor < ring.start:
                    for sub in subs:  # fell out of the ring before it could be written: resync
                        sub.cursor = cursor
                        self._deliver(sub, b"")
                    continue
                data, frames = ring.collect_counted(cursor, head, key)
                if not data:
                    target |= subs
                    continue
                self.deliveries += frames * len(subs)
                self.writes += len(subs)
                self.bytes_out += len(data) * len(subs)
                self._work.append(_Batch(list(subs), data, target, head))

    def flush(self, budget: float | None = None) -> bool:
        """Write everything appended since the last flush to every idle subscriber.

        With a ``budget`` (seconds) it stops after about that long and returns False: the caller
        yields to the event loop and calls again, so a flush to thousands of subscribers never
        holds up a REST request for long. Returns True once every subscriber is written. Without a
        budget, a flush left cut into slices is finished and what was appended since goes out too.
        """
        deadline = time.perf_counter() + budget if budget is not None else None
        if not self._work:
            self._take_batch()
        elif deadline is None:
            self._write_work(None)
            self._take_batch()
        return self._write_work(deadline)

    def _write_work(self, deadline: float | None) -> bool:
        mask = self.slice_mask
        work = self._work
        while work:
            batch = work[-1]
            subs, data, target, head = batch.subs, batch.data, batch.target, batch.head
            framed = None
            while subs:
                sub = subs.pop()
                if sub.detached:
                    continue
                direct = sub.direct
                if direct is not None and not direct.flow.write_paused:
                    # The fast path: one write of a chunk framed once for the whole batch. A paused
                    # connection takes the ASGI path below, which waits for it in a task of its own.
                    if not direct.disconnected:
                        if framed is None:
                            framed = chunk(data)
                        direct.transport.write(framed)
                    target.add(sub)
                    if deadline is not None and not len(subs) & mask and time.perf_counter() > deadline:
                        return False
                    continue
                try:
                    pending = start_write(sub.write(data))
                except Exception as exc:
                    self._close(sub, f"write failed: {exc}")
                    continue
                if pending is None:
                    target.add(sub)
                else:
                    self._block(sub, head, pending)
                if deadline is not None and not len(subs) & mask and time.perf_counter() > deadline:
                    return False
            work.pop()
        return True

    def _block(self, sub: Subscriber, cursor: int, pending: Awaitable[None] | None) -> None:
        """Hand ``sub`` to a task of its own that finishes ``pending`` (a write up to ``cursor``) and catches up."""
        sub.cursor = cursor
        sub.busy = True
        self._busy[sub] = asyncio.create_task(self._catch_up(sub, pending), name="tickhub-catch-up")

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            # A bare yield between slices lets other work run; the wake-up is the event above.
            while not self.flush(FLUSH_SLICE):  # noqa: ASYNC110
                await asyncio.sleep(0)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            self.heartbeat_once()

    def heartbeat_once(self) -> None:
        """Send a comment to every idle subscriber so proxies and clients see the link is alive."""
        ping = comment_frame("ping")
        framed = chunk(ping)
        self.flush()
        for cursor, by_filter in list(self._idle.items()):
            for subs in list(by_filter.values()):
                for sub in list(subs):
                    direct = sub.direct
                    if direct is not None and not direct.flow.write_paused:
                        if not direct.disconnected:
                            direct.transport.write(framed)
                        continue
                    try:
                        pending = start_write(sub.write(ping))
                    except Exception as exc:
                        self._close(sub, f"write failed: {exc}")
                        continue
                    if pending is not None:
                        subs.discard(sub)
                        # Its group's position, not the head: a tick may have come after the flush.
                        self._block(sub, cursor, pending)

    # -- owner ------------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._flush_loop(), name="tickhub-flusher"),
            asyncio.create_task(self._heartbeat_loop(), name="tickhub-heartbeat"),
        ]

    async def close(self, timeout: float = 2.0) -> None:
        """End every stream (idle ones cleanly, blocked ones at once), then stop the tasks."""
        self.closing = True
        self.flush()
        finishing = []
        for by_filter in list(self._idle.values()):
            for subs in list(by_filter.values()):
                for sub in list(subs):
                    finishing.append(self._finish(sub, "shutdown"))
        for sub in list(self._busy):
            self._close(sub, "shutdown")
        if finishing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.gather(*finishing, return_exceptions=True)
        tasks = self._tasks + list(self._busy.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        self._busy.clear()
        self._idle.clear()


def resync_frame(reason: str, last_event_id: str | None = None) -> bytes:
    """Tells a subscriber that what follows starts from a fresh snapshot, not from where it was."""
    if last_event_id is not None:
        last_event_id = last_event_id[:MAX_ECHOED_ID]  # a client's header is not echoed back whole
    return event_frame("resync", orjson.dumps({"reason": reason, "last_event_id": last_event_id}))
