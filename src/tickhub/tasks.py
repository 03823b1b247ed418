"""The sequential task queue: tasks persisted in PostgreSQL, run one at a time in arrival order.

Submitting takes a transaction-scoped advisory lock, so ids are handed out in commit order and
the length cap, and each client's bound (open tasks, seconds of timeouts), hold under concurrent
submits. Exactly one worker runs at a time across all hub
replicas on the database: it holds a session advisory lock on a connection of its own, and the
others wait as standbys. While a task runs the worker watches that connection (asyncpg's
termination event, and a short round trip every second, since a partition closes nothing): once it
is gone the lock may be another's, so the run is abandoned at once. A task's run is numbered
(``attempts``); only the run that is still current can mark it done, so a task whose hub died
mid-run is run again and completes once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from .backoff import Backoff
from .store import Store, unavailable_as_error
from .wire import format_ts

log = logging.getLogger("tickhub.tasks")

CHANNEL = "tickhub_tasks"
SQL_SUBMIT_LOCK = "SELECT pg_advisory_xact_lock(hashtext('tickhub.tasks.submit.' || $1))"
SQL_OPEN_COUNT = "SELECT count(*) FROM tasks WHERE state <> 'done'"
SQL_CLIENT_OPEN = (
    "SELECT count(*) AS tasks, coalesce(sum(timeout), 0) AS seconds, min(timeout) AS shortest"
    " FROM tasks WHERE state <> 'done' AND client = $1"
)
SQL_INSERT = "INSERT INTO tasks (num, timeout, client) VALUES ($1, $2, $3) RETURNING id, num, timeout, state, added_at"
SQL_NOTIFY = "SELECT pg_notify($1, $2)"
_COLUMNS = "id, num, timeout, state, added_at, started_at, finished_at, attempts"
SQL_QUEUE = f"SELECT {_COLUMNS} FROM tasks WHERE state <> 'done' ORDER BY id"
SQL_RESULTS = f"SELECT {_COLUMNS} FROM tasks WHERE state = 'done' ORDER BY finished_at, id LIMIT $1 OFFSET $2"
SQL_ONE = f"SELECT {_COLUMNS} FROM tasks WHERE id = $1"
SQL_POSITION = "SELECT count(*) FROM tasks WHERE state <> 'done' AND id <= $1"
SQL_PING = "SELECT 1"
SQL_WORKER_LOCK = "SELECT pg_try_advisory_lock(hashtext('tickhub.tasks.worker.' || $1))"
SQL_NEXT = "SELECT id, timeout FROM tasks WHERE state <> 'done' ORDER BY id LIMIT 1"
SQL_START = (
    "UPDATE tasks SET state = 'running', started_at = clock_timestamp(), attempts = attempts + 1"
    " WHERE id = $1 RETURNING attempts"
)
SQL_FINISH = (
    "UPDATE tasks SET state = 'done', finished_at = clock_timestamp()"
    " WHERE id = $1 AND state = 'running' AND attempts = $2"
)


class QueueFull(Exception):
    """The queue holds as many open tasks as it may."""


@dataclass(frozen=True)
class ClientBound:
    """What one client may have open at once: tasks, and seconds of their timeouts."""

    tasks: int
    seconds: float


class TooManyTasks(Exception):
    """The client already holds as many open tasks, or seconds of them, as it may."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class WorkerLockLost(Exception):
    """The connection holding the worker lock is gone, so the lock may be another replica's."""


@dataclass(frozen=True)
class Task:
    id: int
    num: int
    timeout: float
    state: str
    added_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    position: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "num": self.num,
            "timeout": self.timeout,
            "state": self.state,
            "added_at": format_ts(self.added_at),
            "started_at": format_ts(self.started_at) if self.started_at else None,
            "finished_at": format_ts(self.finished_at) if self.finished_at else None,
            "attempts": self.attempts,
        }
        if self.position is not None:
            out["position"] = self.position
        return out


def _task(row: asyncpg.Record, position: int | None = None) -> Task:
    return Task(**dict(row), position=position)


def _check_bound(held: asyncpg.Record, timeout: float, bound: ClientBound) -> None:
    # Retry-After is a lower bound: no retry can succeed before that much of the client's work has run.
    if held["tasks"] >= bound.tasks:
        raise TooManyTasks(
            f"this client has {held['tasks']} open tasks, the most it may have; retry when one is done",
            max(1, math.ceil(held["shortest"])),
        )
    excess = held["seconds"] + timeout - bound.seconds
    if excess > 1e-9:  # sums of float timeouts carry rounding: 0.1 + 0.2 fits a bound of 0.3
        raise TooManyTasks(
            f"this client's open tasks hold {held['seconds']:g} s and this one adds {timeout:g} s;"
            f" at most {bound.seconds:g} s may be open; retry when some are done",
            max(1, math.ceil(excess)),
        )


class TaskQueue:
    """Submitting and reading tasks (any replica), and the worker that runs them (one replica)."""

    def __init__(
        self,
        store: Store,
        max_open: int,
        poll: float = 2.0,
        retry_max: float = 5.0,
        watch_interval: float = 1.0,
        watch_timeout: float = 2.0,
    ) -> None:
        self.store = store
        self.max_open = max_open
        self.poll = poll
        self.watch_interval = watch_interval
        self.watch_timeout = watch_timeout
        self.state = "starting"
        self.running: int | None = None
        self.completed = 0
        self._wake = asyncio.Event()
        self._backoff = Backoff(min(0.25, retry_max), retry_max)
        self._task: asyncio.Task[None] | None = None

    # -- any replica ---------------------------------------------------------------------

    async def submit(
        self, num: int, timeout: float, client: str | None = None, bound: ClientBound | None = None
    ) -> Task:
        """Append a task for ``client``; raises TooManyTasks past its bound, QueueFull at the cap."""
        with unavailable_as_error():
            async with self.store.pool.acquire() as conn, conn.transaction():
                await conn.execute(SQL_SUBMIT_LOCK, self.store.schema)
                if client is not None and bound is not None:
                    _check_bound(await conn.fetchrow(SQL_CLIENT_OPEN, client), timeout, bound)
                open_count = await conn.fetchval(SQL_OPEN_COUNT)
                if open_count >= self.max_open:
                    raise QueueFull
                row = await conn.fetchrow(SQL_INSERT, num, timeout, client)
                await conn.execute(SQL_NOTIFY, self._channel, str(row["id"]))
        self._wake.set()
        return _task(row, position=open_count + 1)

    async def queue(self) -> list[Task]:
        with unavailable_as_error():
            rows = await self.store.pool.fetch(SQL_QUEUE)
        return [_task(row, position=i) for i, row in enumerate(rows, start=1)]

    async def results(self, limit: int, offset: int) -> list[Task]:
        with unavailable_as_error():
            return [_task(row) for row in await self.store.pool.fetch(SQL_RESULTS, limit, offset)]

    async def get(self, task_id: int) -> Task | None:
        with unavailable_as_error():
            async with self.store.pool.acquire() as conn:
                row = await conn.fetchrow(SQL_ONE, task_id)
                if row is None:
                    return None
                position = await conn.fetchval(SQL_POSITION, task_id) if row["state"] != "done" else None
        return _task(row, position)

    @property
    def _channel(self) -> str:
        return f"{CHANNEL}_{self.store.schema}"

    # -- the worker ------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tickhub-task-worker")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.state = "stopped"

    async def _run(self) -> None:
        while True:
            try:
                conn = await self.store.connect()
            except Exception as exc:  # the database is down: try again later
                self.state = f"reconnecting ({type(exc).__name__})"
                await asyncio.sleep(self._backoff.next_delay())
                continue
            try:
                await self._work(conn)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError, WorkerLockLost) as exc:
                self.state = f"reconnecting ({type(exc).__name__})"
                log.warning("task worker lost its database connection: %s", exc)
            finally:
                self.running = None
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2):
                        await conn.close()
            await asyncio.sleep(self._backoff.next_delay())

    async def _work(self, conn: asyncpg.Connection) -> None:
        while not await conn.fetchval(SQL_WORKER_LOCK, self.store.schema):
            self.state = "standby"  # another replica runs the queue
            await asyncio.sleep(self.poll)
        self.state = "active"
        self._backoff.reset()
        await conn.add_listener(self._channel, lambda *_: self._wake.set())
        while True:
            row = await conn.fetchrow(SQL_NEXT)
            if row is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll):  # NOTIFY wakes us sooner
                        await self._wake.wait()
                continue
            task_id = row["id"]
            attempt = await conn.fetchval(SQL_START, task_id)
            self.running = task_id
            await self._hold_lock_for(conn, row["timeout"])
            if await conn.execute(SQL_FINISH, task_id, attempt) == "UPDATE 1":
                self.completed += 1
            self.running = None

    async def _hold_lock_for(self, conn: asyncpg.Connection, seconds: float) -> None:
        """Wait ``seconds`` while the lock connection stays alive; raise WorkerLockLost when it goes."""
        lost = asyncio.Event()

        def on_lost(_conn: object) -> None:
            lost.set()

        conn.add_termination_listener(on_lost)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        try:
            while (left := deadline - loop.time()) > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, self.watch_interval)):
                        await lost.wait()
                if lost.is_set() or conn.is_closed():
                    raise WorkerLockLost("the worker lock connection closed")
                try:
                    await conn.fetchval(SQL_PING, timeout=self.watch_timeout)
                except TimeoutError:
                    raise WorkerLockLost(
                        f"the worker lock connection gave no answer in {self.watch_timeout:g}s"
                    ) from None
        finally:
            conn.remove_termination_listener(on_lost)
