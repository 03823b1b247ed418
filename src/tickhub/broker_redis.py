"""``redis://``: the shared log as a Redis Stream (see tickhub.broker for what a broker does).

Keys, under ``tickhub:<namespace>:`` (the namespace is the hub's database schema):

* ``ticks``: the stream. An entry's id is ``<hub id>-0``, so a resume by hub id is one XRANGE, and
  its field ``t`` is the tick's JSON, byte for byte what subscribers get.
* ``seqs``: a hash, the newest seq appended per source; ``lease``: the ingest lease (holder, TTL);
  ``trimmed``: every id below it has been trimmed (and, before that, written to PostgreSQL).
* the consumer group ``writers`` on the stream: each tick goes to one replica's writer, which
  acknowledges it once persisted; XAUTOCLAIM hands over what a dead replica left pending.

Appends run as one Lua script per batch (tickhub.broker_scripts), so the lease check (fencing),
the ``(source, seq)`` dedup and the XADDs are atomic.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as redis
import stamina
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .backoff import Backoff
from .broker import Broker, BrokerUnavailable, LeaseLost, OnGap, OnTicks
from .broker_scripts import APPEND, RELEASE, RENEW, TRIM
from .wire import Tick, tick_from_json

log = logging.getLogger("tickhub.broker")

GROUP = "writers"
APPEND_CHUNK = 1000  # ticks per script call: keeps each call short for the other clients of Redis
READ_COUNT = 5000
BLOCK_MS = 1000
UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)


OP_TIMEOUT = 5.0  # seconds a call to Redis may take before it counts as unavailable


def bounded(method):
    """Run a broker call as a task the broker owns and wait at most OP_TIMEOUT for it, without ever
    cancelling it: redis-py may never return from a command cancelled mid-flight (redis/redis-py#2579,
    #2666), and a caller that gives up (a timeout, a cancelled stop) must not hang on it. A call still
    running when the broker closes ends with its connection."""

    @functools.wraps(method)
    async def call(self: RedisBroker, *args: Any, **kwargs: Any) -> Any:
        return await self._bounded(method(self, *args, **kwargs))

    return call


def entry_id(tick_id: int) -> str:
    return f"{tick_id}-0"


def hub_id_of(entry: bytes | str) -> int:
    text = entry.decode() if isinstance(entry, bytes) else entry
    return int(text.partition("-")[0])


def _ticks(entries: list[Any]) -> list[Tick]:
    return [tick_from_json(fields[b"t"]) for _, fields in entries if fields and b"t" in fields]


def redacted(url: str) -> str:
    """The URL without its password, for /health and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisBroker(Broker):
    scheme = "redis"
    local = False

    def __init__(self, url: str, namespace: str, retention: float = 300.0, claim_after: float = 30.0) -> None:
        super().__init__(url, namespace, retention, claim_after)
        prefix = f"tickhub:{namespace}:"
        self.stream, self.seqs_key = prefix + "ticks", prefix + "seqs"
        self.lease_key, self.trimmed_key = prefix + "lease", prefix + "trimmed"
        self._redis: redis.Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._checkpoints: deque[tuple[float, int]] = deque()  # (when, newest id appended), one a second
        self.read_id = 0  # the newest id handed to this replica's subscribers
        self.claimed = 0  # ticks taken over from writers that left them unwritten
        self.gaps = 0  # times the log had trimmed ticks this replica had not read yet
        self.state = "connecting"
        self.errors = 0
        self.last_error: str | None = None

    @property
    def r(self) -> redis.Redis:
        assert self._redis is not None, "RedisBroker.connect() first"
        return self._redis

    async def connect(self) -> None:
        """Connect (retrying briefly while Redis starts) and make the writers' group."""
        # A blocking read holds its connection for BLOCK_MS: the socket timeout must be longer.
        self._redis = redis.from_url(
            self.url, socket_timeout=BLOCK_MS / 1000 + 4, socket_connect_timeout=5, health_check_interval=15
        )

        @stamina.retry(on=UNAVAILABLE, attempts=6, timeout=20.0, wait_max=3.0)
        async def ready() -> None:
            await self.r.ping()
            with contextlib.suppress(ResponseError):  # BUSYGROUP: another replica made it first
                await self.r.xgroup_create(self.stream, GROUP, id="0", mkstream=True)

        try:
            await ready()
        except UNAVAILABLE as exc:
            await self.close()
            raise BrokerUnavailable(f"Redis at {redacted(self.url)} is not reachable: {exc}") from exc
        self._append = self.r.register_script(APPEND)
        self._renew = self.r.register_script(RENEW)
        self._release = self.r.register_script(RELEASE)
        self._trim_script = self.r.register_script(TRIM)
        self.state = "connected"

    async def _bounded(self, coro: Any) -> Any:
        if self._closing:
            coro.close()
            raise BrokerUnavailable("the broker is closing")
        task = asyncio.ensure_future(_mapped(coro))
        self._inflight.add(task)
        task.add_done_callback(_forget(self._inflight))
        done, _ = await asyncio.wait([task], timeout=OP_TIMEOUT)
        if not done:
            raise BrokerUnavailable(f"Redis at {redacted(self.url)} did not answer within {OP_TIMEOUT:.0f}s")
        return task.result()

    async def close(self) -> None:
        """Stop the readers, then the connections. Nothing here is cancelled in the middle of a Redis
        command (see :func:`bounded`): the connections are closed under the loops and the calls in
        flight, which then end with an error, and the loops return on seeing ``_closing``."""
        self._closing = True
        tasks = [*self._tasks, *self._inflight]
        self._tasks.clear()
        client, self._redis = self._redis, None
        if client is not None:
            await _within(client.connection_pool.disconnect(inuse_connections=True), 2.0)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=BLOCK_MS / 1000 + 1)
            for task in pending:  # still not back: cancel as a last resort, and do not wait long
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2.0)
        if client is not None:
            await _within(client.aclose(), 2.0)

    # -- the ingest lease ------------------------------------------------------------------------

    @bounded
    async def acquire(self, holder: str, ttl: float) -> bool:
        if await self.r.set(self.lease_key, holder, nx=True, px=int(ttl * 1000)):
            return True
        return bool(await self._renew(keys=[self.lease_key], args=[holder, int(ttl * 1000)]))

    @bounded
    async def renew(self, holder: str, ttl: float) -> bool:
        return bool(await self._renew(keys=[self.lease_key], args=[holder, int(ttl * 1000)]))

    @bounded
    async def release(self, holder: str) -> None:
        await self._release(keys=[self.lease_key], args=[holder])

    # -- the log ---------------------------------------------------------------------------------

    @bounded
    async def append(self, holder: str, ticks: Sequence[Tick]) -> int:
        if not ticks:
            return 0
        keys = [self.stream, self.seqs_key, self.lease_key]
        pipe = self.r.pipeline(transaction=False)
        for low in range(0, len(ticks), APPEND_CHUNK):
            args: list[Any] = [holder]
            for t in ticks[low : low + APPEND_CHUNK]:
                args += (t.id, t.source, t.seq, t.json)
            await self._append(keys=keys, args=args, client=pipe)
        results = await pipe.execute(raise_on_error=False)
        added = 0
        for result in results:
            if isinstance(result, ResponseError):
                if "LEASELOST" in str(result):
                    raise LeaseLost(f"the ingest lease is not {holder}'s")
                raise result
            added += int(result)
        now = time.monotonic()
        if not self._checkpoints or now - self._checkpoints[-1][0] >= 1.0:
            self._checkpoints.append((now, ticks[-1].id))
        return added

    @bounded
    async def trim(self) -> None:
        """Drop what is older than the retention and written by every writer (the ingesting replica
        calls this now and then); forget consumers that left nothing pending long ago."""
        horizon = time.monotonic() - self.retention
        cutoff = None
        while self._checkpoints and self._checkpoints[0][0] <= horizon:
            cutoff = self._checkpoints.popleft()[1]
        if cutoff is None:
            return
        pending = await self.r.xpending(self.stream, GROUP)
        groups = {g["name"].decode(): g for g in await self.r.xinfo_groups(self.stream)}
        keep = cutoff + 1
        if pending["pending"]:
            keep = min(keep, hub_id_of(pending["min"]))
        delivered = groups.get(GROUP, {}).get("last-delivered-id")
        if delivered is not None:
            keep = min(keep, hub_id_of(delivered) + 1)
        await self._trim_script(keys=[self.stream, self.trimmed_key], args=[keep])
        for consumer in await self.r.xinfo_consumers(self.stream, GROUP):
            if not consumer["pending"] and consumer["idle"] > 10_000 * self.claim_after:
                await self.r.xgroup_delconsumer(self.stream, GROUP, consumer["name"])

    async def _trimmed_to(self) -> int:
        mark = await self.r.get(self.trimmed_key)
        return int(mark) - 1 if mark else 0

    @bounded
    async def last_seqs(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in (await self.r.hgetall(self.seqs_key)).items()}

    async def subscribe(self, on_ticks: OnTicks, after: int, on_gap: OnGap | None = None) -> None:
        self.read_id = after
        self._tasks.append(asyncio.create_task(self._read(on_ticks, on_gap), name="tickhub-broker-reader"))

    async def _read(self, on_ticks: OnTicks, on_gap: OnGap | None) -> None:
        backoff = Backoff(0.1, 5.0)
        check_gap = True  # at the start and after every outage: did the log trim what we have not read?
        while not self._closing:
            try:
                if check_gap:
                    trimmed = await self._trimmed_to()
                    if self.read_id < trimmed:
                        self.gaps += 1
                        log.warning("the log trimmed ticks after id %d before this replica read them", self.read_id)
                        if on_gap is not None:
                            on_gap(self.read_id, trimmed)
                        self.read_id = trimmed
                    check_gap = False
                response = await self.r.xread({self.stream: entry_id(self.read_id)}, count=READ_COUNT, block=BLOCK_MS)
                self.state = "connected"
                backoff.reset()
            except (*UNAVAILABLE, ResponseError) as exc:
                if self._closing:
                    return
                self._failed(exc)
                check_gap = True
                await asyncio.sleep(backoff.next_delay())
                continue
            if not response or self._closing:
                continue
            ticks = _ticks(response[0][1])
            if ticks:
                self.read_id = ticks[-1].id
                on_ticks(ticks)

    @bounded
    async def first_id(self) -> int | None:
        first = await self.r.xrange(self.stream, "-", "+", count=1)
        return hub_id_of(first[0][0]) if first else None

    @bounded
    async def history(self, after: int, before: int, limit: int) -> list[Tick] | None:
        if after < await self._trimmed_to():
            return None
        entries = await self.r.xrange(self.stream, f"({entry_id(after)}", f"({entry_id(before)}", count=limit)
        return _ticks(entries)

    # -- persistence -----------------------------------------------------------------------------

    async def feed_writer(self, consumer: str, on_ticks: OnTicks, room: asyncio.Event) -> None:
        self._tasks.append(asyncio.create_task(self._feed(consumer, on_ticks, room), name="tickhub-broker-writer"))

    async def _feed(self, consumer: str, on_ticks: OnTicks, room: asyncio.Event) -> None:
        backoff = Backoff(0.1, 5.0)
        next_claim = 0.0
        while not self._closing:
            await room.wait()  # the writer is behind: the stream keeps the ticks meanwhile
            try:
                if time.monotonic() >= next_claim:
                    next_claim = time.monotonic() + self.claim_after / 2
                    await self._claim(consumer, on_ticks)
                response = await self.r.xreadgroup(
                    GROUP, consumer, {self.stream: ">"}, count=READ_COUNT, block=BLOCK_MS
                )
                backoff.reset()
            except (*UNAVAILABLE, ResponseError) as exc:
                if self._closing:
                    return
                self._failed(exc)
                if isinstance(exc, ResponseError):  # NOGROUP/UNBLOCKED: the stream was deleted (a Redis reset)
                    with contextlib.suppress(RedisError):
                        await self.r.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
                await asyncio.sleep(backoff.next_delay())
                continue
            if response and not self._closing:
                ticks = _ticks(response[0][1])
                if ticks:
                    on_ticks(ticks)

    async def _claim(self, consumer: str, on_ticks: OnTicks) -> None:
        """Take over what other writers were handed ``claim_after`` seconds ago and never acknowledged."""
        start = "0-0"
        while True:
            start, entries, *_ = await self.r.xautoclaim(
                self.stream, GROUP, consumer, int(self.claim_after * 1000), start_id=start, count=READ_COUNT
            )
            ticks = _ticks(entries)
            if ticks:
                log.info("took over %d unwritten ticks from a replica that left them", len(ticks))
                self.claimed += len(ticks)
                on_ticks(ticks)
            if start in (b"0-0", "0-0"):
                return

    @bounded
    async def written(self, consumer: str, ticks: Sequence[Tick]) -> None:
        ids = [entry_id(t.id) for t in ticks]
        for low in range(0, len(ids), 10000):
            await self.r.xack(self.stream, GROUP, *ids[low : low + 10000])

    def _failed(self, exc: BaseException) -> None:
        self.state = "unavailable"
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"[:300]
        if self.errors == 1 or self.errors % 100 == 0:
            log.warning("Redis at %s unavailable (%d so far): %s", redacted(self.url), self.errors, self.last_error)

    def health(self) -> dict[str, object]:
        return {
            "url": redacted(self.url),
            "stream": self.stream,
            "state": self.state,
            "read_id": str(self.read_id) if self.read_id else None,
            "retention_s": self.retention,
            "claimed": self.claimed,
            "gaps": self.gaps,
            "errors": self.errors,
            "last_error": self.last_error,
        }


async def delete_namespace(url: str, namespace: str) -> int:
    """Delete every key of ``namespace`` from the Redis at ``url`` (a test's or benchmark's own);
    the replicas using it must have stopped. Returns how many keys went."""
    client = redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"tickhub:{namespace}:*")]
        return await client.delete(*keys) if keys else 0
    finally:
        await client.aclose()


async def _mapped(coro: Any) -> Any:
    """The coroutine's result, with Redis' connection errors as BrokerUnavailable."""
    try:
        return await coro
    except UNAVAILABLE as exc:
        raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from exc
    except RedisError as exc:
        if "LEASELOST" in str(exc):
            raise LeaseLost(str(exc)) from exc
        raise


def _forget(tasks: set[asyncio.Task[Any]]):
    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a call its caller gave up on may still fail

    return done


async def _within(coro: Any, timeout: float) -> None:
    """Await ``coro`` for at most ``timeout`` seconds, then cancel it as a last resort (closing only)."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait([task], timeout=timeout)
    if not done:
        task.cancel()
    elif not task.cancelled():
        task.exception()
