"""SerialGate: what serializes GET /test — one asyncio.Lock per process, optionally also a
PostgreSQL advisory lock so every replica on one database takes turns.

Both locks queue waiters in arrival order. A waiter that is cancelled (its client went away)
leaves the queue without disturbing it: asyncio.Lock passes a wake-up it can no longer use on to
the next waiter, and a cancelled advisory-lock query is rolled back with its transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

from .store import Store, unavailable_as_error

SQL_XACT_LOCK = "SELECT pg_advisory_xact_lock(hashtext('tickhub.test.' || $1))"


class SerialGate:
    def __init__(self, mode: str, store: Store | None = None) -> None:
        if mode not in ("local", "postgres"):
            raise ValueError(f"unknown lock mode {mode!r}")
        if mode == "postgres" and store is None:
            raise ValueError("the postgres lock mode needs a store")
        self.mode = mode
        self.store = store
        self._lock = asyncio.Lock()
        self.waiting = 0
        self.turns = 0  # how many holders the gate has had
        #: (acquired, released) loop times of the latest turns, so tests can see they never overlap.
        self.history: deque[tuple[float, float]] = deque(maxlen=1000)

    @contextlib.asynccontextmanager
    async def hold(self, wait_max: float) -> AsyncIterator[None]:
        """Hold the gate; raises TimeoutError if it is not ours within ``wait_max`` seconds."""
        self.waiting += 1
        try:
            async with asyncio.timeout(wait_max):
                await self._lock.acquire()
        finally:
            self.waiting -= 1
        self.turns += 1
        try:
            if self.mode == "local":
                async with self._turn():
                    yield
                return
            assert self.store is not None
            # The process lock above means one connection per replica waits here, not one per request.
            with unavailable_as_error():
                async with self.store.pool.acquire() as conn, conn.transaction():
                    await conn.execute(SQL_XACT_LOCK, self.store.schema, timeout=wait_max)
                    async with self._turn():
                        yield
        finally:
            self._lock.release()

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """The critical section itself: recorded in ``history`` when it ends."""
        loop = asyncio.get_running_loop()
        acquired = loop.time()
        try:
            yield
        finally:
            self.history.append((acquired, loop.time()))
