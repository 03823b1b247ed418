"""Ingest: one aiohttp SSE client per source, feeding validated ticks to the sequencer.

Each client reconnects with ``Last-Event-ID`` set to the newest seq the hub accepted from that
source (after a restart: the newest *persisted* seq), with capped jittered backoff. A source that
answers a first connection with only its newest event of each symbol (a bridge) is asked for
everything it holds (``Last-Event-ID: 0``) when the hub reconnects having accepted nothing from it
yet: a bridge restarted before the hub got any of its events holds none the hub has seen. aiohttp's
``sock_read`` timeout is the stale-feed watchdog: no byte (event or heartbeat comment) for
``stale_timeout`` seconds and the connection is dropped and made again.

A source is read ``READ_CHUNK`` bytes at a time with a turn of the event loop between reads, so a
fast source never holds up the fan-out, REST or the writer's round trips to PostgreSQL for long;
and not at all while one of ``rooms`` (the writer's, the broker outbox's) is cleared: the source
keeps the ticks meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from typing import Any

import aiohttp

from .backoff import Backoff
from .sequencer import Sequencer
from .wire import SourceTick, SSEEvent, SSEParser, TickRejected, parse_source_tick

log = logging.getLogger("tickhub.ingest")

#: Bytes of a source's stream handled in one turn of the event loop (about 300 ticks).
READ_CHUNK = 65536
#: How far a seq may be ahead of the current time in microseconds. Sources count from the time in µs
#: or from 1, so a seq beyond it is a glitch: accepted, every later seq of its source would be dropped
#: as a replay, across restarts too.
SEQ_AHEAD = 86_400 * 10**6


class SourceStats:
    """What /health shows about one source."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url
        self.state = "starting"
        self.connected_at: float | None = None
        self.last_event_at: float | None = None
        self.last_tick: SourceTick | None = None
        self.last_tick_at: float | None = None
        self.accepted = 0
        self.duplicates = 0
        self.gaps = 0
        self.ignored = 0
        self.rejects: Counter[str] = Counter()
        self.connects = 0
        #: Unexpected errors in this source's task (a bug, or input nobody foresaw), each followed by a reconnect.
        self.failures = 0
        self.last_error: str | None = None

    @property
    def last_tick_lag(self) -> float | None:
        """Seconds between the newest tick's source time and the chunk that brought it."""
        if self.last_tick is None or self.last_tick_at is None:
            return None
        return self.last_tick_at - self.last_tick.time.timestamp()

    def as_dict(self, last_seq: int) -> dict[str, Any]:
        now = time.time()
        return {
            "url": self.url,
            "state": self.state,
            "connected_for_s": round(now - self.connected_at, 3) if self.connected_at else None,
            "last_event_age_s": round(now - self.last_event_at, 3) if self.last_event_at else None,
            "lag_ms": round(self.last_tick_lag * 1000, 3) if self.last_tick_lag is not None else None,
            "last_seq": last_seq,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "gaps": self.gaps,
            "ignored": self.ignored,
            "rejects": dict(self.rejects),
            "rejected": sum(self.rejects.values()),
            "connects": self.connects,
            "failures": self.failures,
            "last_error": self.last_error,
        }


class SourceError(Exception):
    """The source answered in a way we cannot stream from."""


class SourceClient:
    """Streams one source into the sequencer for as long as the hub runs."""

    def __init__(
        self,
        name: str,
        url: str,
        sequencer: Sequencer,
        session: aiohttp.ClientSession,
        *,
        stale_timeout: float,
        connect_timeout: float,
        reconnect_min: float,
        reconnect_max: float,
        max_line: int,
        rooms: tuple[asyncio.Event, ...] = (),
        reserved: frozenset[str] = frozenset(),
    ) -> None:
        self.name = name
        #: Symbols no source may publish: the hub's own (its instruments' composites).
        self.reserved = reserved
        self.stale_timeout = stale_timeout
        self.rooms = rooms
        self.url = url
        self.sequencer = sequencer
        self.session = session
        self.stats = SourceStats(name, url)
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=stale_timeout)
        self.backoff = Backoff(reconnect_min, reconnect_max)
        self.max_line = max_line
        self._connection_max_seq = 0
        self._last_seq = 0
        self._seq_ceiling = 0  # no seq above it: the time in µs plus SEQ_AHEAD, renewed every chunk
        self._connection_accepted = 0
        self._connection_duplicates = 0

    async def run(self) -> None:
        stats = self.stats
        while True:
            stats.state = "connecting"
            try:
                await self._stream()
                stats.last_error = "source closed the stream"
            except asyncio.CancelledError:
                stats.state = "stopped"
                raise
            except TimeoutError:
                stats.state = "stale"
                stats.last_error = "no event or heartbeat within the stale timeout"
            except (aiohttp.ClientError, SourceError, OSError) as exc:
                stats.last_error = f"{type(exc).__name__}: {exc}"[:300]
            except Exception as exc:  # never let one source's ingest end silently: log, count, reconnect
                stats.failures += 1
                stats.last_error = f"unexpected {type(exc).__name__}: {exc}"[:300]
                log.exception("source %s: unexpected error (%d so far); reconnecting", self.name, stats.failures)
            stats.connected_at = None
            if stats.state != "stale":
                stats.state = "reconnecting"
            delay = self.backoff.next_delay()
            log.info("source %s: %s; reconnecting in %.2fs", self.name, stats.last_error, delay)
            await asyncio.sleep(delay)

    async def _stream(self) -> None:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        last_seq = self.sequencer.last_seq(self.name)
        if last_seq or self.stats.connects:
            headers["Last-Event-ID"] = str(last_seq)
        async with self.session.get(self.url, headers=headers, timeout=self.timeout) as resp:
            if resp.status != 200:
                raise SourceError(f"HTTP {resp.status}")
            if resp.content_type != "text/event-stream":
                raise SourceError(f"content-type {resp.content_type!r} is not text/event-stream")
            stats = self.stats
            stats.state = "connected"
            stats.connects += 1
            stats.connected_at = stats.last_event_at = time.time()
            log.info("source %s connected (resuming after seq %s)", self.name, last_seq or "-")
            parser = SSEParser(max_line=self.max_line, ticks=True)
            self._connection_max_seq = self._connection_accepted = self._connection_duplicates = 0
            self._last_seq = self.sequencer.last_seq(self.name)
            on_tick, rooms = self._on_tick, self.rooms
            connected = time.monotonic()
            async for chunk in resp.content.iter_chunked(READ_CHUNK):
                stats.last_event_at = time.time()
                self._seq_ceiling = time.time_ns() // 1000 + SEQ_AHEAD
                oversized, accepted = parser.oversized, stats.accepted
                for item in parser.feed(chunk):
                    if type(item) is SourceTick:  # the canonical tick frame, validated by the parser
                        on_tick(item)
                    else:
                        self._on_event(item)
                if stats.accepted != accepted:
                    stats.last_tick_at = stats.last_event_at
                    self.backoff.reset()  # the feed works: a later failure starts from the shortest delay
                if parser.oversized != oversized:
                    for _ in range(parser.oversized - oversized):
                        self._reject("oversized", f"an SSE line or event above {self.max_line} bytes")
                if self._connection_accepted or not self._connection_duplicates:
                    if stats.state == "behind":
                        stats.state, stats.last_error = "connected", None
                elif stats.state == "connected" and time.monotonic() - connected > self.stale_timeout:
                    self._behind()
                if not all(room.is_set() for room in rooms):
                    for room in rooms:
                        await room.wait()  # the hub is behind: the source holds the ticks meanwhile
                else:
                    await asyncio.sleep(0)  # the buffer may hold more: let the rest of the hub run first

    def _on_event(self, event: SSEEvent) -> None:
        if event.event != "tick":
            self.stats.ignored += 1
            return
        try:
            tick = parse_source_tick(event.data, event.id)
        except TickRejected as exc:
            self._reject(exc.reason, str(exc))
            return
        self._on_tick(tick)

    def _on_tick(self, tick: SourceTick) -> None:
        stats = self.stats
        if tick.seq > self._seq_ceiling:  # accepted, it would make every later seq of the source a "replay"
            self._reject("seq_ahead", f"seq {tick.seq} is more than a day ahead of the time in microseconds")
            return
        if tick.symbol in self.reserved:
            self._reject("reserved_symbol", f"{tick.symbol} is the hub's own (an instrument's composite)")
            return
        if self.sequencer.accept(self.name, tick) is None:
            if tick.seq < self._connection_max_seq:  # lower than one this connection already sent
                self._reject("seq_backwards", f"seq {tick.seq} after {self._connection_max_seq}")
            else:  # a replay of what an earlier connection delivered
                stats.duplicates += 1
                self._connection_duplicates += 1
            return
        self._connection_accepted += 1
        if tick.seq != self._last_seq + 1 and self._last_seq:
            stats.gaps += 1
        self._last_seq = self._connection_max_seq = tick.seq
        stats.accepted += 1
        stats.last_tick = tick  # its lag is worked out when someone asks, not per tick

    def _behind(self) -> None:
        """This connection brought only seqs at or below the newest accepted, for longer than the stale
        timeout: a source restarted on a clock that is behind, or whose seqs went back. Dropped as
        replays they would be silent; the source is reported instead (it recovers on its first new seq)."""
        stats = self.stats
        stats.state = "behind"
        stats.last_error = (
            f"every event of this connection ({self._connection_duplicates} so far) is at or below seq "
            f"{self.sequencer.last_seq(self.name)}, already accepted: are the source's seqs going back?"
        )
        log.warning("source %s: %s", self.name, stats.last_error)

    def _reject(self, reason: str, detail: str) -> None:
        count = self.stats.rejects[reason] = self.stats.rejects[reason] + 1
        # The reason only: the event's content (prices included) stays out of logs at INFO and above.
        if count in (1, 10, 100, 1000) or count % 10000 == 0:
            log.warning("source %s: rejected an event (%s; %d so far)", self.name, reason, count)
        log.debug("source %s: rejected event: %s", self.name, detail[:200])


class Ingest:
    """Owns the HTTP session and one client task per configured source."""

    def __init__(self, sources: tuple[tuple[str, str], ...], sequencer: Sequencer, **client_options: Any) -> None:
        self.sources = sources
        self.sequencer = sequencer
        self.client_options = client_options
        self.clients: dict[str, SourceClient] = {}
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=True)
        for name, url in self.sources:
            client = SourceClient(name, url, self.sequencer, self._session, **self.client_options)
            self.clients[name] = client
            self._tasks.append(asyncio.create_task(client.run(), name=f"tickhub-source-{name}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()
            self._session = None

    def health(self) -> dict[str, dict[str, Any]]:
        return {name: c.stats.as_dict(self.sequencer.last_seq(name)) for name, c in self.clients.items()}
