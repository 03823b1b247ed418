"""The tick table's days: partitions created ahead, old days dropped whole (``TICKHUB_RETENTION``).

``ticks`` is partitioned by the day of ``ts`` (migration 0009): ``ticks_past`` before the first day,
``ticks_YYYYMMDD`` for each day, ``ticks_future`` from the day after the last. :func:`maintain` moves
those bounds in one short transaction, under an explicit lock with a timeout, so a tick of any time
always has a partition:

- **Ahead**: the days up to :data:`AHEAD` days from now exist before their ticks come (a tick already
  in ``ticks_future`` for such a day moves into it).
- **Retention**: every day that ends before ``now - retention`` is dropped whole (never a DELETE), and
  ``ticks_past`` (by then only older ticks that came late) is emptied; the highest id dropped is kept in
  ``tick_retention``, so a resume from before it gets ``resync too_old`` rather than a silent jump. A
  longer retention than the first day allows splits ``ticks_past`` into days again.

Each change takes the parent table's ACCESS EXCLUSIVE lock for the catalogue work only (milliseconds):
the writer's next COPY and a history query wait that long; streaming does not touch PostgreSQL. The lock
is asked for with a timeout, so a long query never makes everything queue behind it: the change is
tried again at the next round. Replicas may all run this: an advisory lock lets one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from . import rollup
from .wire import format_ts

log = logging.getLogger("tickhub.partitions")

DAY = timedelta(days=1)
#: Days of partitions kept ready after today.
AHEAD = 3
#: No day partition is made further back than this: older ticks stay in ticks_past. Every partition a
#: query cannot rule out by time costs it a few slots of PostgreSQL's shared lock table
#: (max_locks_per_transaction x max_connections, 6,400 by default).
MAX_DAYS_BACK = 400
#: How long maintenance waits for the table's lock before it leaves the change to the next round.
LOCK_TIMEOUT = "2s"
PAST, FUTURE = "ticks_past", "ticks_future"

SQL_PARTITIONS = """
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'ticks'::regclass
"""
SQL_TRY_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext('tickhub.partitions.' || current_schema()))"
SQL_SIZES = """
SELECT count(*), coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'ticks'::regclass
"""
SQL_LOWEST_ID = "SELECT min(id) FROM ticks"
# The oldest tick by its time: the first entry of each symbol's (symbol, ts) index in every partition.
SQL_OLDEST_TS = """
SELECT min(x.ts) FROM (SELECT DISTINCT symbol FROM latest_ticks) AS l
CROSS JOIN LATERAL (SELECT ts FROM ticks WHERE ticks.symbol = l.symbol ORDER BY ts LIMIT 1) AS x
"""
SQL_RETENTION = "SELECT dropped_through_id, dropped_before, dropped_at FROM tick_retention"
SQL_RECORD_DROP = """
INSERT INTO tick_retention (dropped_through_id, dropped_before) VALUES ($1, $2)
ON CONFLICT (one) DO UPDATE
SET dropped_through_id = greatest(tick_retention.dropped_through_id, EXCLUDED.dropped_through_id),
    dropped_before = greatest(tick_retention.dropped_before, EXCLUDED.dropped_before), dropped_at = now()
"""


def day_name(day: date) -> str:
    return f"ticks_{day:%Y%m%d}"


def day_of(name: str) -> date | None:
    """The day of a partition named by :func:`day_name`; None for ticks_past and ticks_future."""
    if len(name) == 14 and name.startswith("ticks_") and name[6:].isdigit():
        return date(int(name[6:10]), int(name[10:12]), int(name[12:14]))
    return None


def at_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def first_day_kept(now: datetime, retention: timedelta) -> date:
    """The first day retention keeps: the day holding ``now - retention`` (days wholly before it go)."""
    return (now - retention).astimezone(UTC).date()


@dataclass
class Change:
    """What one maintenance round did."""

    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    moved: int = 0  # ticks moved out of ticks_past or ticks_future into days of their own
    emptied: int = 0  # late ticks older than the retention dropped with ticks_past
    dropped_through_id: int | None = None
    seconds: float = 0.0  # the transaction, lock wait included

    def __bool__(self) -> bool:
        return bool(self.created or self.dropped or self.moved or self.emptied)


async def days(conn: asyncpg.Connection) -> list[date]:
    """The days that have a partition of their own, oldest first."""
    return sorted(d for d in (day_of(r[0]) for r in await conn.fetch(SQL_PARTITIONS)) if d is not None)


async def maintain(
    conn: asyncpg.Connection, now: datetime, retention: timedelta | None, lock_timeout: str = LOCK_TIMEOUT
) -> Change | None:
    """One round: days ahead, retention. None when another replica holds the round or the table's lock
    could not be had within :data:`LOCK_TIMEOUT` (the next round tries again)."""
    started = time.perf_counter()
    today = now.astimezone(UTC).date()
    change = Change()
    try:
        async with conn.transaction():
            if not await conn.fetchval(SQL_TRY_LOCK):
                return None
            have = await days(conn)
            if not have:
                raise RuntimeError("ticks has no day partitions: migration 0009 did not run")
            first, last = have[0], have[-1]
            want_last = max(last, today + timedelta(days=AHEAD))
            horizon = None if retention is None else first_day_kept(now, retention)
            want_first = first
            if horizon is not None and horizon > first:
                want_first = min(horizon, want_last)
            elif horizon is not None:
                # A retention reaching before the first day: days come out of ticks_past only from its oldest
                # tick within the retention (never a partition for every day of a long retention, and none
                # more than MAX_DAYS_BACK before today: the lock table of PostgreSQL counts partitions).
                floor = at_midnight(max(horizon, today - timedelta(days=MAX_DAYS_BACK)))
                oldest = await conn.fetchval(f"SELECT min(ts) FROM {PAST} WHERE ts >= $1", floor)
                if oldest is not None:
                    want_first = min(first, oldest.astimezone(UTC).date())
            await conn.execute("SELECT set_config('lock_timeout', $1, true)", lock_timeout)
            if want_last != last or want_first != first:
                await conn.execute("LOCK TABLE ticks IN ACCESS EXCLUSIVE MODE")
                if want_last > last:
                    await _extend_future(conn, last + DAY, want_last, change)
                if want_first > first:
                    await _drop_before(conn, want_first, [d for d in have if d < want_first], change)
                elif want_first < first:
                    await _split_past(conn, want_first, first, change)
            if horizon is not None and await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {PAST})"):
                await _empty_past(conn, at_midnight(horizon), change)  # ticks that came late, past retention
    except asyncpg.LockNotAvailableError:
        log.info("partition maintenance waited %s for the tick table's lock; next round", lock_timeout)
        return None
    change.seconds = time.perf_counter() - started
    if change:
        log.info(
            "partitions: created %d, dropped %d (through id %s), moved %d late or early ticks, %.0f ms",
            len(change.created),
            len(change.dropped),
            change.dropped_through_id,
            change.moved + change.emptied,
            change.seconds * 1000,
        )
    return change


async def _extend_future(conn: asyncpg.Connection, start: date, last: date, change: Change) -> None:
    """Days ``start`` .. ``last`` get partitions; ticks_future begins after ``last``."""
    await conn.execute(f"ALTER TABLE ticks DETACH PARTITION {FUTURE}")
    await _create_days(conn, start, last, change)
    end = at_midnight(last + DAY)
    change.moved += _count(await conn.execute(f"INSERT INTO ticks SELECT * FROM {FUTURE} WHERE ts < $1", end))
    await conn.execute(f"DELETE FROM {FUTURE} WHERE ts < $1", end)
    await _attach(conn, FUTURE, f"'{end.isoformat()}'", "MAXVALUE")


async def _drop_before(conn: asyncpg.Connection, first: date, old: list[date], change: Change) -> None:
    """Drop the days before ``first`` and what ticks_past holds; ticks_past ends at ``first``."""
    parts = [day_name(d) for d in old] + [PAST]
    highest = await conn.fetchval(
        "SELECT max(m) FROM (" + " UNION ALL ".join(f"SELECT max(id) AS m FROM {p}" for p in parts) + ") AS t"
    )
    change.emptied = await conn.fetchval(f"SELECT count(*) FROM {PAST}")
    await conn.execute(f"ALTER TABLE ticks DETACH PARTITION {PAST}")
    for day in old:
        await conn.execute(f"DROP TABLE {day_name(day)}")
        change.dropped.append(day_name(day))
    await conn.execute(f"TRUNCATE {PAST}")  # the days from ``first`` on exist: the partitions are contiguous
    await _attach(conn, PAST, "MINVALUE", f"'{at_midnight(first).isoformat()}'")
    await _record_drop(conn, highest, at_midnight(first), change)


async def _empty_past(conn: asyncpg.Connection, first: datetime, change: Change) -> None:
    """Ticks that came late into ticks_past, all before ``first`` (the first day the retention keeps):
    dropped, their ids recorded. Left alone while it holds a tick the retention keeps (one older than
    :data:`MAX_DAYS_BACK` days under a longer retention): a partition goes whole or not at all."""
    await conn.execute(f"LOCK TABLE {PAST} IN ACCESS EXCLUSIVE MODE")
    count, highest, newest = await conn.fetchrow(f"SELECT count(*), max(id), max(ts) FROM {PAST}")
    if newest is None or newest >= first:
        return
    change.emptied = count
    await conn.execute(f"TRUNCATE {PAST}")
    await _record_drop(conn, highest, first, change)


async def _record_drop(conn: asyncpg.Connection, highest: int | None, before: datetime, change: Change) -> None:
    """Keep the highest id dropped (with the time before which ticks went), for resumes from below it."""
    if highest is not None:
        await conn.execute(SQL_RECORD_DROP, highest, before)
        change.dropped_through_id = highest


async def _split_past(conn: asyncpg.Connection, first: date, old_first: date, change: Change) -> None:
    """Days ``first`` .. the day before ``old_first`` come out of ticks_past, their ticks with them."""
    await conn.execute(f"ALTER TABLE ticks DETACH PARTITION {PAST}")
    await _create_days(conn, first, old_first - DAY, change)
    start = at_midnight(first)
    change.moved += _count(await conn.execute(f"INSERT INTO ticks SELECT * FROM {PAST} WHERE ts >= $1", start))
    await conn.execute(f"DELETE FROM {PAST} WHERE ts >= $1", start)
    await _attach(conn, PAST, "MINVALUE", f"'{start.isoformat()}'")


async def _create_days(conn: asyncpg.Connection, first: date, last: date, change: Change) -> None:
    day = first
    while day <= last:
        name = day_name(day)
        await conn.execute(
            f"CREATE TABLE {name} PARTITION OF ticks FOR VALUES FROM ('{at_midnight(day).isoformat()}')"
            f" TO ('{at_midnight(day + DAY).isoformat()}')"
        )
        change.created.append(name)
        day += DAY


async def _attach(conn: asyncpg.Connection, name: str, low: str, high: str) -> None:
    """Attach ``name`` again for [low, high): PostgreSQL checks its rows fit (it is empty or small)."""
    await conn.execute(f"ALTER TABLE ticks ATTACH PARTITION {name} FOR VALUES FROM ({low}) TO ({high})")


def _count(status: str) -> int:
    """The row count of an ``INSERT 0 n`` command status."""
    return int(status.rsplit(" ", 1)[-1])


@dataclass
class StorageState:
    """What /health and /metrics show of the tick table, as of the last round."""

    partitions: int = 0
    table_bytes: int = 0
    lowest_id: int | None = None  # the lowest id kept: where a replay from PostgreSQL can start
    oldest_ts: datetime | None = None  # the time of the oldest tick kept
    dropped_through_id: int | None = None
    dropped_before: datetime | None = None
    last_round_at: float | None = None
    last_change_ms: float | None = None
    last_error: str | None = None
    rounds: int = 0
    dropped_days: int = 0
    dropped_late_ticks: int = 0  # ticks past the retention that were in ticks_past, dropped with it
    rollup_rows_dropped: int = 0

    def as_dict(self, retention: timedelta | None) -> dict[str, Any]:
        def ts(value: datetime | None) -> str | None:
            return None if value is None else format_ts(value)

        return {
            "partitions": self.partitions,
            "table_bytes": self.table_bytes,
            "lowest_id": None if self.lowest_id is None else str(self.lowest_id),
            "oldest_ts": ts(self.oldest_ts),
            "retention_seconds": None if retention is None else int(retention.total_seconds()),
            "dropped_through_id": None if self.dropped_through_id is None else str(self.dropped_through_id),
            "dropped_before": ts(self.dropped_before),
            "dropped_days": self.dropped_days,
            "dropped_late_ticks": self.dropped_late_ticks,
            "rollup_rows_dropped": self.rollup_rows_dropped,
            "last_change_ms": self.last_change_ms,
            "last_error": self.last_error,
        }


class PartitionKeeper:
    """Runs :func:`maintain` every ``interval`` seconds (the hub runs the first :meth:`round` itself, at
    start), and keeps :class:`StorageState`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        retention: timedelta | None,
        interval: float = 60.0,
        rollup_retention: timedelta | None = None,
    ) -> None:
        self.pool = pool
        self.retention = retention
        self.rollup_retention = rollup_retention
        self.interval = interval
        self.state = StorageState()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tickhub-partitions")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def round(self, now: datetime | None = None) -> Change | None:
        """One round now; the state is refreshed whatever happened."""
        now = now or datetime.now(UTC)
        change = None
        try:
            async with self.pool.acquire() as conn:
                change = await maintain(conn, now, self.retention)
                if self.rollup_retention is not None:
                    await self._trim_rollups(conn, now)
                await self._observe(conn)
            self.state.last_error = None
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            self.state.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("partition maintenance failed: %s", self.state.last_error)
        if change:
            self.state.last_change_ms = round(change.seconds * 1000, 1)
            self.state.dropped_days += len(change.dropped)
            self.state.dropped_late_ticks += change.emptied
        self.state.rounds += 1
        self.state.last_round_at = time.time()
        return change

    async def _trim_rollups(self, conn: asyncpg.Connection, now: datetime) -> None:
        """Candle rollups older than their retention, whole days (minute and hour rows alike, so hour and
        day candles never miss the minutes of a partial hour): a DELETE, the tables being small (1,440
        rows a symbol a day), in their own transaction."""
        assert self.rollup_retention is not None
        before = at_midnight(first_day_kept(now, self.rollup_retention))
        async with conn.transaction():
            gone = sum([await rollup.drop_before(conn, table, before) for table in ("candles_1m", "candles_1h")])
        self.state.rollup_rows_dropped += gone

    async def _observe(self, conn: asyncpg.Connection) -> None:
        state = self.state
        state.partitions, state.table_bytes = await conn.fetchrow(SQL_SIZES)
        state.lowest_id = await conn.fetchval(SQL_LOWEST_ID)
        state.oldest_ts = await conn.fetchval(SQL_OLDEST_TS)
        dropped = await conn.fetchrow(SQL_RETENTION)
        if dropped is not None:
            state.dropped_through_id, state.dropped_before = dropped[0], dropped[1]

    async def _run(self) -> None:
        """A round every ``interval`` seconds (the first was the hub's, at start)."""
        while True:
            await asyncio.sleep(self.interval)
            await self.round()
