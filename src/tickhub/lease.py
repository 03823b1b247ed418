"""IngestLease: which replica reads the sources. Holds the broker's lease, renews it, hands it over.

Every ``ttl / 3`` seconds the holder renews and a standby tries to take the lease. The holder
stops ingest the moment a renewal is refused, and also when it could not renew for ``ttl``
seconds (Redis unreachable): by then a standby may hold the lease, and the broker would refuse
its appends anyway (fencing). A replica that stops gracefully releases the lease, so a standby
takes over within one interval instead of after the TTL.

Each term of holding has a token of its own (the holder's name and the term's number), and appends
go under it: an append left over from a term that lapsed is refused even if the same replica holds
the lease again by then (a fencing token).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from .broker import Broker, BrokerUnavailable

log = logging.getLogger("tickhub.lease")


class IngestLease:
    def __init__(
        self,
        broker: Broker,
        holder: str,
        ttl: float,
        on_gain: Callable[[], Awaitable[None]],
        on_lose: Callable[[], Awaitable[None]],
        on_hold: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.broker = broker
        self.holder = holder
        self.ttl = ttl
        self.on_gain = on_gain
        self.on_lose = on_lose
        self.on_hold = on_hold  # called after every renewal (the holder's housekeeping: trimming)
        self.held = False
        self.gained = 0
        #: The lease's value in the broker for the current (or next) term.
        self.token = f"{holder}#1"
        self._confirmed = 0.0  # monotonic time of the last successful acquire or renewal
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def try_acquire(self) -> bool:
        """One attempt to take the lease (the hub makes one at start, before serving)."""
        try:
            async with asyncio.timeout(self.ttl / 3):
                got = await self.broker.acquire(self.token, self.ttl)
        except (BrokerUnavailable, TimeoutError) as exc:
            log.warning("could not ask for the ingest lease: %s", exc)
            return False
        if got:
            self._confirmed = time.monotonic()
            self.held = True
            self.gained += 1
            log.info("%s holds the ingest lease", self.token)
            await self.on_gain()
        return got

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tickhub-ingest-lease")

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.ttl / 3):
                    await self._stop.wait()
            if self._stop.is_set():
                return
            if not self.held:
                await self.try_acquire()
                continue
            try:
                async with asyncio.timeout(self.ttl / 3):
                    kept = await self.broker.renew(self.token, self.ttl)
            except (BrokerUnavailable, TimeoutError) as exc:
                if time.monotonic() - self._confirmed < self.ttl:
                    continue  # not lost yet: the lease runs until its TTL
                log.warning("ingest lease not renewed for %.1fs (%s): stopping ingest", self.ttl, exc)
                kept = False
            if kept:
                self._confirmed = time.monotonic()
                if self.on_hold is not None:
                    with contextlib.suppress(BrokerUnavailable):
                        await self.on_hold()
            else:
                await self.lost()

    async def lost(self) -> None:
        """Stop ingesting (a refused renewal, or an append refused by the broker)."""
        if self.held:
            self.held = False
            log.warning("%s lost the ingest lease; standing by", self.token)
            self.token = f"{self.holder}#{self.gained + 1}"  # the next term's: this one's appends are refused
            await self.on_lose()

    async def stop(self) -> None:
        """Stop the loop; the caller stops ingest, then :meth:`release` hands the lease on.

        The loop is asked to end, not cancelled in the middle of a broker call (redis-py may never
        return from a cancelled command, redis/redis-py#2579)."""
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            _, pending = await asyncio.wait([task], timeout=self.ttl)
            for stuck in pending:
                stuck.cancel()
                await asyncio.wait([stuck], timeout=1.0)

    async def release(self) -> None:
        if self.held:
            self.held = False
            with contextlib.suppress(BrokerUnavailable, TimeoutError):
                async with asyncio.timeout(2.0):
                    await self.broker.release(self.token)
