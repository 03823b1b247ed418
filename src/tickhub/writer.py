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

A batch PostgreSQL refuses for what it holds (a data error, not a lost connection) is split in
halves until the refused rows are alone; those are set aside in ``rejected_ticks`` and the rest is
written, so one row can never stop persistence. Dropped and refused ids are recorded in ``tick_gaps``
(with the next write that succeeds), so a resume across them resyncs, after a restart too.

``released`` is told of every tick the writer is done with, written, dropped or set aside, so a
shared log can let it go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from .backoff import Backoff
from .store import Store, is_data_error
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
        #: Ticks in the batch being written: part of the backlog until it is done.
        self.in_flight = 0
        self._wake = asyncio.Event()
        self._backoff = Backoff(retry_min, retry_max)
        self._task: asyncio.Task[None] | None = None
        #: Highest id committed; every lower id of this run is committed or in ``dropped_ranges``.
        self.persisted_id = 0
        self.written = 0
        self.batches = 0
        self.dropped = 0
        self.dropped_ranges: list[tuple[int, int]] = []
        #: Ticks PostgreSQL refused (kept in ``rejected_ticks``); their ids are gaps like dropped ones.
        self.rejected = 0
        self._gaps_to_record: list[tuple[int, int, str]] = []  # (first id, last id, reason), not yet in PostgreSQL
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
        queued = len(pending)
        n = queued + self.in_flight
        if n > self.backlog:
            self._drop(pending.popleft())
        # Checked on every add: ingest reads a chunk before it looks at the room again.
        if n > self.high_water and self.room.is_set() and (self.pause_when_failing or not self.failing):
            self.room.clear()
            self.pauses += 1
        if queued == 1 or queued >= self.batch:
            self._wake.set()

    def _drop(self, tick: Tick) -> None:
        self.dropped += 1
        if self.released is not None:
            self._dropped.append(tick)
        self._gap(tick.id, "dropped")
        self.persisted_id = max(self.persisted_id, tick.id)

    def _gap(self, tick_id: int, reason: str, record: bool = True) -> None:
        """Remember that ``tick_id`` will never be in PostgreSQL, here and (with ``record``, at the next
        write) in ``tick_gaps``."""
        ranges = self.dropped_ranges
        if ranges and ranges[-1][1] + 1 == tick_id:
            ranges[-1] = (ranges[-1][0], tick_id)
        else:
            ranges.append((tick_id, tick_id))
            del ranges[:-MAX_DROPPED_RANGES]
        if not record:
            return
        gaps = self._gaps_to_record
        if gaps and gaps[-1][1] + 1 == tick_id and gaps[-1][2] == reason:
            gaps[-1] = (gaps[-1][0], tick_id, reason)
        else:
            gaps.append((tick_id, tick_id, reason))

    @property
    def backlog_size(self) -> int:
        """Ticks not yet written: queued and in the batch being written."""
        return len(self._pending) + self.in_flight

    def is_gap_free(self, low: int, high: int) -> bool:
        """True unless a dropped or refused range of this run overlaps the open interval (low, high)."""
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
        self.in_flight = len(batch)
        started = time.perf_counter()
        try:
            if self._gaps_to_record:
                gaps, self._gaps_to_record = self._gaps_to_record, []
                try:
                    await self.store.record_gaps(gaps)
                except BaseException:
                    self._gaps_to_record[:0] = gaps
                    raise
            refused = 0
            try:
                await self.store.write_ticks(batch)
            except Exception as exc:
                if not is_data_error(exc):
                    raise
                refused = await self._write_around_refused(batch, exc)
        except asyncio.CancelledError:
            self.in_flight = 0
            pending.extendleft(reversed(batch))  # may have committed: the retry's merge skips those rows
            raise
        except Exception as exc:  # any failure keeps the rows for a retry; StoreUnavailable is the usual one
            self.in_flight = 0
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
        self.in_flight = 0
        self.last_batch_seconds = time.perf_counter() - started
        self.last_batch_size = len(batch)
        if self.on_batch is not None:
            self.on_batch(len(batch), self.last_batch_seconds)
        self.written += len(batch) - refused
        self.batches += 1
        self.persisted_id = max(self.persisted_id, max(t.id for t in batch))
        self.failing = False
        if len(pending) <= self.high_water // 2:
            self.room.set()
        self._backoff.reset()
        await self._release(batch)
        return True

    async def _write_around_refused(self, batch: list[Tick], first_error: Exception) -> int:
        """Write ``batch`` in ever smaller parts until the rows PostgreSQL refuses are alone; set those
        aside and return how many. If a part fails for another reason the error propagates and the whole
        batch is retried later: the retry's merge skips the parts already committed."""
        # Error classes only at WARNING and above: PostgreSQL's messages quote the values (prices included).
        log.warning("PostgreSQL refused %d ticks (%s); finding the rows", len(batch), type(first_error).__name__)
        refused: list[tuple[Tick, str]] = []
        parts = [batch[len(batch) // 2 :], batch[: len(batch) // 2]] if len(batch) > 1 else []
        if len(batch) == 1:
            refused.append((batch[0], _describe(first_error)))
        while parts:  # a stack, so the parts are written in id order
            part = parts.pop()
            try:
                await self.store.write_ticks(part)
            except Exception as exc:
                if not is_data_error(exc):
                    raise
                if len(part) == 1:
                    refused.append((part[0], _describe(exc)))
                else:
                    parts += [part[len(part) // 2 :], part[: len(part) // 2]]
        await self.store.set_aside(refused)
        for tick, error in refused:
            log.error("set aside tick %d of source %s in rejected_ticks: %s", tick.id, tick.source, error.split(":")[0])
            log.debug("PostgreSQL refused tick %d: %s", tick.id, error)
        self.rejected += len(refused)
        for tick, _ in sorted(refused, key=lambda r: r[0].id):
            self._gap(tick.id, "rejected", record=False)  # set_aside recorded it in tick_gaps already
        return len(refused)

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
        if self._gaps_to_record:  # so that a resume across them resyncs after the restart too
            try:
                async with asyncio.timeout(max(0.5, deadline - time.monotonic())):
                    await self.store.record_gaps(self._gaps_to_record)
                self._gaps_to_record = []
            except Exception as exc:
                log.error("could not record %d ranges of lost ticks: %s", len(self._gaps_to_record), exc)


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]
