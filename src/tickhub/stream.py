"""GET /stream: the SSE subscription, its snapshot, and resume by Last-Event-ID.

A new subscriber gets ``retry:``, a ``snapshot`` event (with the newest id) and then live ticks
from the fan-out. A resuming subscriber gets every tick after its id: from the broker's log or PostgreSQL for
what the ring no longer holds, then from the ring, then live, with no gap and none twice. An id we
cannot resume from (not ours, from the future, or needing more than ``replay_limit`` ticks) gets
a ``resync`` event and a fresh snapshot instead — never silence.

The response is driven by the fan-out's flusher rather than by a generator per subscriber, so it
is a small ASGI response class of its own (see BENCHMARKS.md for the measurement behind this).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from .broker import BrokerUnavailable
from .connections import abort_with_reset
from .errors import ApiError, response_for
from .fanout import Subscriber, SymbolFilter, resync_frame
from .sequencer import parse_event_id, run_of
from .store import StoreUnavailable
from .subscriber import direct_cycle
from .wire import SYMBOL_RE, retry_frame, tick_frame

if TYPE_CHECKING:
    from .hub import Hub

log = logging.getLogger("tickhub.stream")

REPLAY_PAGE = 2000
RING_CHUNK = 1024
CATCH_UP_WAIT = 2.0  # how long a replica waits to be handed an id another replica already sent
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def parse_symbols(raw: str | None, max_symbols: int) -> SymbolFilter:
    """``BTCUSD,meta`` → frozenset({"BTCUSD", "META"}); None (all symbols) when empty."""
    if raw is None or not raw.strip():
        return None
    # Upper-cased only when ASCII: str.upper() maps some other letters onto ASCII ones (a long s to "S").
    names = {name.upper() if name.isascii() else name for name in (p.strip() for p in raw.split(",")) if name}
    if len(names) > max_symbols:
        raise ApiError(400, "too_many_symbols", f"at most {max_symbols} symbols per subscription")
    bad = sorted(n for n in names if not SYMBOL_RE.match(n))
    if bad:
        raise ApiError(400, "bad_symbol", f"not a symbol: {bad[0][:40]!r}")
    return frozenset(names)


class Resync(Exception):
    """The subscriber cannot be resumed; carries the reason sent in the ``resync`` event."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TickStreamResponse:
    """An SSE response fed by the hub's fan-out."""

    def __init__(self, hub: Hub, symbols: SymbolFilter, last_event_id: str | None, client: str) -> None:
        self.hub = hub
        self.client = client
        self.symbols = symbols
        self.last_event_id = last_event_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._serve(receive, send)
        finally:
            self.hub.streams_closed(self.client)

    async def _serve(self, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})

        def write(data: bytes):
            return send({"type": "http.response.body", "body": data, "more_body": True})

        def finish():
            return send({"type": "http.response.body", "body": b"", "more_body": False})

        # ASGI has no message that drops a connection; uvicorn's send is a method of the request
        # cycle, which holds the transport. Without it a stalled client's socket would stay open.
        transport = getattr(getattr(send, "__self__", None), "transport", None)
        abort = abort_with_reset(transport)  # a reset, so the kernel frees what the client never read
        sub = Subscriber(write, finish, self.symbols, abort)
        sub.direct = direct_cycle(send)
        receiver = asyncio.ensure_future(_until_disconnect(receive))
        opener = None if self.last_event_id is None else asyncio.ensure_future(self._resume(sub))
        if opener is None:
            hub = self.hub
            prelude = retry_frame(hub.settings.retry_ms) + hub.market.snapshot_frame(self.symbols)
            hub.fanout.attach(sub, hub.ring.head, prelude)
        try:
            await asyncio.wait((receiver, sub.closed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (receiver, opener):
                if task is not None:
                    task.cancel()
            self.hub.fanout.detach(sub)
            with contextlib.suppress(BaseException):
                if opener is not None:
                    await opener

    async def _resume(self, sub: Subscriber) -> None:
        hub = self.hub
        try:
            await sub.write(retry_frame(hub.settings.retry_ms))
            position = await self._replay(sub)
            # No await from here on: the rest of the ring is taken and handed over in one step,
            # so no burst of ticks can push it out of the ring in between.
            head = hub.ring.head
            rest, frames = hub.ring.collect_counted(position, head, self.symbols)
            hub.replayed["ring"] += frames
        except Resync as exc:
            log.info("resyncing a subscriber at Last-Event-ID %r: %s", (self.last_event_id or "")[:40], exc.reason)
            await sub.write(resync_frame(exc.reason, self.last_event_id))
            hub.fanout.attach(sub, hub.ring.head, hub.market.snapshot_frame(self.symbols))
            return
        except Exception as exc:  # the client went away mid-replay, or the server refused a write
            log.info("replay to a subscriber ended: %s", exc)
            if not sub.closed.done():
                sub.closed.set_result("replay failed")
            return
        hub.fanout.attach(sub, head, rest)

    async def _replay(self, sub: Subscriber) -> int:
        """Send every tick after Last-Event-ID; return the ring position live delivery starts at.

        Older than the ring, ticks come from the broker's log while it reaches back that far, and
        before the log begins from PostgreSQL (everything older than the log is written there).
        """
        hub, ring, symbols = self.hub, self.hub.ring, self.symbols
        cursor = parse_event_id(self.last_event_id)
        if cursor is None:
            raise Resync("unknown_id")
        newest = hub.market.last_id or 0
        if cursor > newest and not hub.broker.local:  # from a replica a little ahead of this one
            await hub.caught_up(cursor, CATCH_UP_WAIT)
            newest = hub.market.last_id or 0
        if cursor > newest and run_of(cursor) >= hub.run:
            raise Resync("unknown_id")  # an id no replica has issued (yet)
        budget = hub.settings.replay_limit
        counted = False
        while True:
            upper = ring.first_id if len(ring) else hub.ring_floor_id
            if cursor + 1 < upper:  # part of the replay lies before the ring
                try:
                    first = await hub.broker.first_id()
                    if first is not None and cursor + 1 >= first:
                        rows = await hub.broker.history(cursor, upper, REPLAY_PAGE)
                        if rows is None:
                            continue  # trimmed meanwhile: PostgreSQL has it now
                        scanned = rows[-1].id if len(rows) == REPLAY_PAGE else upper - 1
                        rows = [t for t in rows if symbols is None or t.symbol in symbols]
                        tier = "log"
                    else:
                        end = upper if first is None else min(upper, first)
                        if not counted:
                            counted = True
                            if cursor < await hub.store.dropped_through():
                                raise Resync("too_old")  # retention dropped ticks after it
                            n = await hub.store.count_after(cursor, end, _sorted(symbols), budget + 1)
                            if n > budget:
                                raise Resync("too_old")
                        if not hub.writer.is_gap_free(cursor, end) or await hub.store.has_gap(cursor, end):
                            raise Resync("history_unavailable")  # dropped or refused ticks, this run or an earlier one
                        rows = await hub.store.ticks_after(cursor, end, _sorted(symbols), REPLAY_PAGE)
                        scanned = rows[-1].id if len(rows) == REPLAY_PAGE else end - 1
                        tier = "postgres"
                except (StoreUnavailable, BrokerUnavailable):
                    raise Resync("history_unavailable") from None
                if rows:
                    await sub.write(b"".join(tick_frame(t.id, t.json) for t in rows))
                    hub.replayed[tier] += len(rows)
                    budget -= len(rows)
                    if budget < 0:
                        raise Resync("too_old")
                cursor = scanned
                continue
            position = ring.position_after(cursor)
            if ring.head - position <= RING_CHUNK:
                return position
            end = position + RING_CHUNK
            data, frames = ring.collect_counted(position, end, symbols)
            cursor = ring.id_at(end - 1)
            if data:
                await sub.write(data)
                hub.replayed["ring"] += frames


def _sorted(symbols: SymbolFilter) -> list[str] | None:
    return None if symbols is None else sorted(symbols)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def stream_endpoint(request: Request) -> TickStreamResponse:
    hub: Hub = request.app.state.hub
    if hub.draining:
        raise ApiError(
            503, "draining", "the hub is shutting down; reconnect to another replica or retry", {"Retry-After": "1"}
        )
    symbols = parse_symbols(request.query_params.get("symbols"), hub.settings.max_symbols)
    last_event_id = request.headers.get("last-event-id") or request.query_params.get("last_event_id") or None
    client = request.client.host if request.client else "-"
    if not hub.streams_opened(client):
        raise ApiError(
            429,
            "too_many_streams",
            f"at most {hub.settings.max_streams_per_client} open streams per client",
            {"Retry-After": "5"},
        )
    return TickStreamResponse(hub, symbols, last_event_id, client)


async def serve_stream(scope: Scope, receive: Receive, send: Send) -> None:
    """``GET /stream`` as a bare ASGI app (the fast lane of tickhub.app.HubApp)."""
    request = Request(scope, receive)
    try:
        response = await stream_endpoint(request)
    except Exception as exc:  # the same answers the routed path gives (400, 429, 503 ...)
        response = await response_for(request, exc)
    await response(scope, receive, send)
