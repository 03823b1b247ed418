"""Outbox: sequenced ticks on their way into the broker's log, appended in order, a batch a turn.

The sequencer hands each tick to :meth:`Outbox.add` (synchronously, per tick); one task appends
everything that came since its last append. Past ``high_water`` waiting ticks :attr:`room` is
cleared, and ingest stops reading its sources until the log has caught up. An append refused for
a lapsed lease drops what waits (the next holder ingests it again) and tells ``on_lease_lost``;
an unreachable broker is retried, capped and jittered, with the batch kept in front.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from .backoff import Backoff
from .broker import Broker, BrokerUnavailable, LeaseLost
from .wire import Tick

log = logging.getLogger("tickhub.outbox")


class Outbox:
    def __init__(
        self,
        broker: Broker,
        token: Callable[[], str],
        high_water: int,
        on_lease_lost: Callable[[], Awaitable[None]],
        retry_min: float = 0.25,
        retry_max: float = 10.0,
    ) -> None:
        self.broker = broker
        self.token = token  # the lease token of the current term, asked at every append
        self.high_water = high_water
        self.on_lease_lost = on_lease_lost
        self._ticks: list[Tick] = []
        self._ready = asyncio.Event()
        #: Cleared while more than ``high_water`` ticks wait (the broker is behind).
        self.room = asyncio.Event()
        self.room.set()
        self._backoff = Backoff(retry_min, retry_max)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def __len__(self) -> int:
        return len(self._ticks)

    def add(self, tick: Tick) -> None:
        """The sequencer's sink (called once per tick, never blocks)."""
        ticks = self._ticks
        ticks.append(tick)
        if len(ticks) == 1:
            self._ready.set()
        elif len(ticks) > self.high_water and self.room.is_set():
            self.room.clear()

    def clear(self) -> None:
        """Forget what waits: sequenced under a lease that has lapsed, it is the next holder's to ingest."""
        self._ticks.clear()
        self.room.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tickhub-outbox")

    async def _run(self) -> None:
        while not self._stopping:
            await self._ready.wait()
            self._ready.clear()
            while self._ticks:
                batch, self._ticks = self._ticks, []
                try:
                    await self.broker.append(self.token(), batch)
                except LeaseLost:
                    self.clear()
                    await self.on_lease_lost()
                    break
                except BrokerUnavailable as exc:
                    self._ticks[:0] = batch  # in order, before what came meanwhile
                    if self._stopping:
                        return
                    log.warning("could not append %d ticks to the log, will retry: %s", len(batch), exc)
                    await asyncio.sleep(self._backoff.next_delay())
                    continue
                self._backoff.reset()
                if len(self._ticks) <= self.high_water // 2:
                    self.room.set()

    async def stop(self, flush_timeout: float) -> None:
        """Append what waits, then stop (a graceful stop; bounded by ``flush_timeout``).

        The task is asked to finish rather than cancelled: redis-py may never return from a
        cancelled command (redis/redis-py#2579), which would leave this stop waiting for good.
        """
        self._stopping = True
        self._ready.set()
        task, self._task = self._task, None
        if task is None:
            return
        _, pending = await asyncio.wait([task], timeout=flush_timeout)
        if pending:
            log.warning("the outbox did not finish appending %d ticks in %.1fs", len(self._ticks), flush_timeout)
            task.cancel()
            await asyncio.wait([task], timeout=1.0)
