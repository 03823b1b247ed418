"""A subscription's state between connections, without I/O: shared by the aiohttp client and its
synchronous twin, which only move bytes.

It knows what to ask for (``Last-Event-ID`` of the last event handed out), turns SSE events into
:class:`Tick` and :class:`Snapshot` objects, drops a tick whose ``(source, seq)`` it handled already
(a hub that crashed may send one again under a new id) and counts it, and says how long to wait
before the next connection: capped, jittered exponential backoff, never below the hub's ``retry:``
hint or an answer's ``Retry-After``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from typing import Any

import orjson

from .backoff import Backoff
from .client_models import HubError, SeenTicks, Snapshot, Tick

log = logging.getLogger("tickhub.client")

#: Bytes of an error answer read to name the error (the rest is not ours to buffer).
ERROR_BODY_MAX = 65536


def base_url(url: str) -> str:
    """The hub's base URL: ``http://host:8000/stream/`` and ``http://host:8000`` both → ``http://host:8000``."""
    url = url.rstrip("/")
    return url[: -len("/stream")] if url.endswith("/stream") else url


def retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (the delta form; a date is not worth a clock here)."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


def error_from(status: int, body: bytes, retry_after_header: str | None = None) -> HubError:
    """The :class:`HubError` of an answer that is not what was asked for."""
    try:
        error = orjson.loads(body)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):  # not the hub's JSON: a proxy's page, say
        code, message = "http_error", body[:200].decode("utf-8", "replace").strip() or f"HTTP {status}"
    return HubError(status, code, message, retry_after(retry_after_header))


def worth_retrying(error: HubError) -> bool:
    """Unreachable, busy (429) or failing (5xx): the same request may work in a moment."""
    return error.status is None or error.status == 429 or error.status >= 500


class StreamState:
    """Where a subscription stands: the last event id handed out, the ticks handled, the next delay."""

    def __init__(
        self,
        url: str,
        symbols: Iterable[str] | None = None,
        last_event_id: str | None = None,
        *,
        reconnect_min: float = 0.25,
        reconnect_max: float = 10.0,
        memory: int = 10_000,
    ) -> None:
        self.url = base_url(url) + "/stream"
        self.symbols = sorted({s.strip().upper() for s in symbols or () if s.strip()})
        #: The id of the last event handed out: where a new connection resumes.
        self.last_event_id = last_event_id
        self.backoff = Backoff(reconnect_min, reconnect_max)
        self.seen = SeenTicks(memory)
        #: Ticks not handed out because their ``(source, seq)`` was handled already.
        self.dropped = 0
        #: Events that were not valid JSON of their kind: skipped, counted and logged.
        self.malformed = 0
        #: Connections made, and connections lost (each followed by a new one).
        self.connects = 0
        self.reconnects = 0
        self.retry_floor = 0.0  # the hub's retry:, in seconds: the least wait before a reconnect
        self._resync: str | None = None  # the reason of a resync whose snapshot has not come yet

    # -- what to ask -------------------------------------------------------------------------

    def params(self) -> dict[str, str]:
        return {"symbols": ",".join(self.symbols)} if self.symbols else {}

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        return headers

    def connected(self) -> None:
        """The hub answered with a stream."""
        self.connects += 1
        self._resync = None  # a resync without its snapshot is sent again on the new connection
        log.debug("subscribed to %s (after id %s)", self.url, self.last_event_id)

    def retry_hint(self, ms: int | None) -> None:
        """The stream's ``retry:`` value, the least wait before reconnecting."""
        if ms is not None:
            self.retry_floor = ms / 1000

    # -- what came ---------------------------------------------------------------------------

    def handle(self, event: str, data: str, id: str | None) -> Tick | Snapshot | None:
        """The object to hand out for one SSE event, or None (a repeat, a resync, an unknown event)."""
        self.backoff.reset()  # the link works: a later failure starts from the shortest delay
        try:
            if event == "tick":
                return self._tick(Tick.from_json(orjson.loads(data)), id)
            if event == "snapshot":
                return self._snapshot(tuple(Tick.from_json(t) for t in orjson.loads(data)["ticks"]), id)
            if event == "resync":
                body = orjson.loads(data)
                self._resync = str(body.get("reason") or "unknown") if isinstance(body, dict) else "unknown"
                log.info("the hub cannot resume after id %s (%s): a snapshot follows", self.last_event_id, self._resync)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # orjson's error is a ValueError
            self.skipped(1, f"a malformed {event} event (id {id}): {exc}")
            if id:
                self.last_event_id = id  # resuming before it would only bring it again
        return None  # other events are for newer clients

    def skipped(self, count: int, what: str) -> None:
        """Count and log events the parser could not hand over (an oversized one)."""
        self.malformed += count
        log.warning("skipped %d event(s): %s", count, what)

    def _tick(self, tick: Tick, id: str | None) -> Tick | None:
        self.last_event_id = id or tick.id
        if self.seen.first_time(tick.source, tick.seq):
            return tick
        self.dropped += 1
        if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
            log.info(
                "dropped (%s, %s) sent again as id %s; %d repeats so far", tick.source, tick.seq, tick.id, self.dropped
            )
        return None

    def _snapshot(self, ticks: tuple[Tick, ...], id: str | None) -> Snapshot:
        if id:
            self.last_event_id = id
        new = tuple(t for t in ticks if self.seen.first_time(t.source, t.seq))
        snapshot = Snapshot(id, ticks, new, self._resync)
        self._resync = None
        return snapshot

    # -- when to ask again -------------------------------------------------------------------

    def lost(self, cause: str | Exception) -> float:
        """Count a lost connection, log it, and return the seconds to wait before the next one.

        ``cause`` is why: a text, a transport error, or a :class:`HubError`, which is raised again
        unless asking again may help (:func:`worth_retrying`).
        """
        if isinstance(cause, HubError) and not worth_retrying(cause):
            raise cause
        self.reconnects += 1
        delay = self.backoff.next_delay()
        hinted = cause.retry_after if isinstance(cause, HubError) else None
        floor = min(max(self.retry_floor, hinted or 0.0), self.backoff.maximum)
        if floor > delay:  # jittered above the floor, so clients the hub let go together come back apart
            delay = random.uniform(floor, min(self.backoff.maximum, floor * 1.25))
        why = cause if isinstance(cause, str) else describe(cause)
        log.info("stream lost (%s); resuming after id %s in %.2fs", why, self.last_event_id, delay)
        return delay


class SubscriptionBase:
    """What the asyncio and the synchronous subscription share: their state, options and counters.

    Options: ``stale_timeout`` (no byte for that long → reconnect; the hub heartbeats every 15 s by
    default), ``connect_timeout``, ``reconnect_min``/``reconnect_max`` (the backoff, in seconds),
    ``memory`` (how many ``(source, seq)`` are remembered to drop repeats).
    """

    def __init__(
        self,
        url: str,
        symbols: Iterable[str] | None = None,
        last_event_id: str | None = None,
        *,
        stale_timeout: float = 45.0,
        connect_timeout: float = 10.0,
        **state: Any,
    ) -> None:
        self.state = StreamState(url, symbols, last_event_id, **state)
        self.stale_timeout = stale_timeout
        self.connect_timeout = connect_timeout

    @property
    def last_event_id(self) -> str | None:
        """The id of the last event handed out: pass it as ``last_event_id`` to resume elsewhere."""
        return self.state.last_event_id

    @property
    def dropped(self) -> int:
        """Ticks not handed out because their ``(source, seq)`` was handled already."""
        return self.state.dropped

    @property
    def reconnects(self) -> int:
        """Connections lost (each followed by a new one)."""
        return self.state.reconnects


def refusal(url: str, status: int, content_type: str, body: bytes, retry_after_header: str | None) -> HubError | None:
    """None if the answer is an event stream; else the error it is (see :func:`worth_retrying`)."""
    if status == 200 and content_type == "text/event-stream":
        return None
    if status == 200:
        return HubError(
            status, "not_a_stream", f"{url} answered {content_type or 'no content type'}, not an event stream"
        )
    return error_from(status, body, retry_after_header)


def describe(exc: BaseException) -> str:
    """A short reason for the log: the exception's type and message."""
    text = str(exc)
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
