"""The one batched writer that persists every accepted tick to PostgreSQL.

Ticks queue in memory in hub order; the writer flushes when a batch is full or its oldest tick
has waited ``flush_interval``. While PostgreSQL is unreachable the queue grows up to ``backlog``
ticks, then the oldest are dropped and counted (and their id ranges kept, so a resume that would
need them resyncs instead of skipping them silently).

While PostgreSQL is reachable but slower than the sources, nothing is dropped: past
``high_water`` queued ticks :attr:`room` is cleared, ingest stops reading its sources until the
queue is back under half of it, and the sources hold the ticks (their replay rings, TCP). With
``pause_when_failing`` (several replicas share a log that keeps what is unwritten) the room also
closes while PostgreSQL is down, so nothing is dropped then either.

``released`` is told of every tick the writer is done with, written or dropped, so a shared log
can let it go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from .backoff import Backoff
from .store import Store
from .wire import Tick

log = logging.getLogger("tickhub.writer")

MAX_DROPPED_RANGES = 64


class CopyWriter:
    """Owns the write queue and the task that drains it into PostgreSQL."""

    def __init__(
        self,
        store: Store,
        batch: int = 50000,
        flush_interval: float = 0.05,
        backlog: int = 1_000_000,
        retry_min: float = 0.25,
        retry_max: float = 5.0,
        on_batch: Callable[[int, float], None] | None = None,
        high_water: int = 100_000,
        pause_when_failing: bool = False,
        released: Callable[[Sequence[Tick]], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.batch = batch
        self.flush_interval = flush_interval
        self.backlog = backlog
        self.high_water = high_water
        self.pause_when_failing = pause_when_failing
        self.released = released
        self._dropped: list[Tick] = []  # dropped, not yet reported to ``released``
        #: Set while ingest may read on; cleared past ``high_water`` unless PostgreSQL is failing.
        self.room = asyncio.Event()
        self.room.set()
        self.pauses = 0
        self._pending: deque[Tick] = deque()
        self._wake = asyncio.Event()
        self._backoff = Backoff(retry_min, retry_max)
        self._task: asyncio.Task[None] | None = None
        #: Highest id committed; every lower id of this run is committed or in ``dropped_ranges``.
        self.persisted_id = 0
        self.written = 0
        self.batches = 0
        self.dropped = 0
        self.dropped_ranges: list[tuple[int, int]] = []
        self.errors = 0
        self.failing = False
        self.last_error: str | None = None
        self.last_batch_size = 0
        self.last_batch_seconds = 0.0
        self.on_batch = on_batch

    # -- the hot path -----------------------------------------------------------------------

    def add(self, tick: Tick) -> None:
        """Queue one tick (called once per accepted tick, never blocks)."""
        pending = self._pending
        pending.append(tick)
        n = len(pending)
        if n > self.backlog:
            self._drop(pending.popleft())
        if n == 1 or n >= self.batch:
            self._wake.set()
            if n > self.high_water and self.room.is_set() and (self.pause_when_failing or not self.failing):
                self.room.clear()
                self.pauses += 1

    def _drop(self, tick: Tick) -> None:
        self.dropped += 1
        if self.released is not None:
            self._dropped.append(tick)
        ranges = self.dropped_ranges
        if ranges and ranges[-1][1] + 1 == tick.id:
            ranges[-1] = (ranges[-1][0], tick.id)
        else:
            ranges.append((tick.id, tick.id))
            del ranges[:-MAX_DROPPED_RANGES]
        self.persisted_id = max(self.persisted_id, tick.id)

    @property
    def backlog_size(self) -> int:
        return len(self._pending)

    def is_gap_free(self, low: int, high: int) -> bool:
        """True unless a dropped range overlaps the open interval (low, high)."""
        return not any(start < high and end > low for start, end in self.dropped_ranges)

    # -- the task ----------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tickhub-writer")

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
            if len(self._pending) < self.batch and self.flush_interval > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.flush_interval):
                        await self._wake.wait()  # add() wakes us early when the batch is full
            if not await self._flush_once():
                await asyncio.sleep(self._backoff.next_delay())

    async def _flush_once(self) -> bool:
        """Write one batch from the front of the queue; on failure put it back. True on success."""
        pending = self._pending
        if not pending:
            return True
        batch = [pending.popleft() for _ in range(min(self.batch, len(pending)))]
        started = time.perf_counter()
        try:
            await self.store.write_ticks(batch)
        except asyncio.CancelledError:
            pending.extendleft(reversed(batch))  # may have committed: the retry's merge skips those rows
            raise
        except Exception as exc:  # any failure keeps the rows for a retry; StoreUnavailable is the usual one
            self.errors += 1
            self.failing = True
            if not self.pause_when_failing:
                self.room.set()  # PostgreSQL is down: keep streaming, queue up to the backlog, drop beyond
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            if self.errors == 1 or self.errors % 100 == 0:
                log.warning("tick writer failed (%d so far), will retry: %s", self.errors, self.last_error)
            pending.extendleft(reversed(batch))
            while len(pending) > self.backlog:
                self._drop(pending.popleft())
            await self._release([])  # what was dropped: a log need not keep it for this writer
            return False
        self.last_batch_seconds = time.perf_counter() - started
        self.last_batch_size = len(batch)
        if self.on_batch is not None:
            self.on_batch(len(batch), self.last_batch_seconds)
        self.written += len(batch)
        self.batches += 1
        self.persisted_id = max(self.persisted_id, max(t.id for t in batch))
        self.failing = False
        if len(pending) <= self.high_water // 2:
            self.room.set()
        self._backoff.reset()
        await self._release(batch)
        return True

    async def _release(self, batch: list[Tick]) -> None:
        """Tell ``released`` of a written batch and of what was dropped meanwhile (never raises)."""
        if self.released is None:
            return
        done = batch + self._dropped if self._dropped else batch  # no copy of the batch in the usual case
        self._dropped = []
        try:
            await self.released(done)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the log keeps them unacknowledged; another replica rewrites them, a no-op
            log.warning("could not acknowledge %d written ticks: %s", len(done), exc)

    async def close(self, timeout: float) -> None:
        """Stop the task, then flush what is queued for at most ``timeout`` seconds."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            try:
                async with asyncio.timeout(max(0.01, deadline - time.monotonic())):
                    ok = await self._flush_once()
            except TimeoutError:
                break
            if not ok:
                await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        if self._pending and self.pause_when_failing:  # unacknowledged in the shared log: another replica writes them
            log.warning(
                "tick writer stopped with %d ticks unwritten; the log hands them to another replica", len(self._pending)
            )
            self._pending.clear()
        elif self._pending:
            lost = len(self._pending)
            while self._pending:
                self._drop(self._pending.popleft())
            log.error("tick writer stopped with %d ticks not persisted", lost)
            await self._release([])
