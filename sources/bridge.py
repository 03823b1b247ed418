"""Exchange bridges: an exchange's public WebSocket on one side, a SourceFeed (SSE ``/stream``) on the other.

The lifecycle lives here once: connect, send the subscribe messages (paced), read with a stale
watchdog, reconnect with capped jittered backoff, renew a connection before the exchange's age
limit, publish every price into the feed. An adapter (sources.exchange) knows only one exchange:
its connection URLs, its subscribe messages and how a message becomes quotes.

A bridge never publishes an event twice. Start-up prices (Binance's ``ticker/price`` snapshot) are
ordinary events, published before the feed is served. A consumer without ``Last-Event-ID`` (a hub's
first connection) is given the newest event of each symbol from the ring, with its own seq, then
live events; a consumer resuming by ``Last-Event-ID`` gets the ring after it. A price the exchange
sends again (on a resubscribe) is dropped (sources.repeats), so it is never published under a new seq.

``/health`` says ``degraded`` with a ``reason`` while a connection is down, and while one is up but has
brought no price for the stale window and messages the adapter could not read (an API of another
version, another channel): a busy link is not a working one.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tickhub.backoff import Backoff
from tickhub.wire import TickRejected, check_fields, check_price, check_symbol

from .app import source_app
from .connection import ConnectionStats, MessagePacer
from .exchange import BridgeError, ConnectionPlan, ExchangeAdapter, Malformed, Quote, Reconnect
from .feed import SourceFeed
from .repeats import PublishedQuotes

log = logging.getLogger("tickhub.bridge")


@dataclass(frozen=True)
class BridgeSettings:
    """Timers and sizes of one bridge process; every network wait is bounded by one of them."""

    ws_url: str
    symbols: tuple[str, ...]
    name: str
    stale_timeout: float = 30.0  # no frame (data, heartbeat or ping) for this long → reconnect
    max_age: float | None = None  # reconnect a connection this old (Binance closes at 24 h)
    connect_timeout: float = 10.0
    close_timeout: float = 2.0
    reconnect_min: float = 0.25
    reconnect_max: float = 30.0
    ring_size: int = 100_000
    heartbeat: float = 5.0
    send_timeout: float = 30.0  # a consumer that reads nothing for this long is dropped (it resumes)


class ExchangeBridge:
    """Owns the HTTP session, the feed and one task per WebSocket; an async context manager.

    ``prepare()`` runs start-up checks (a subclass may call REST); ``app()`` is the SSE app whose
    producer is :meth:`run`. A :class:`BridgeError` met while running sets ``error`` and ``failed``.
    """

    mode = "ws"

    def __init__(self, adapter: ExchangeAdapter, settings: BridgeSettings) -> None:
        self.adapter = adapter
        self.settings = settings
        self.feed = SourceFeed(
            settings.name,
            ring_size=settings.ring_size,
            heartbeat=settings.heartbeat,
            latest_first=True,
            send_timeout=settings.send_timeout,
        )
        self.connections: list[ConnectionStats] = []
        self.published = 0
        self.repeats = 0  # prices the exchange sent again, not published again
        self.unpriced = 0  # quote-only updates before any price of their symbol, not published
        self.ignored = 0
        self.malformed: collections.Counter[str] = collections.Counter()
        self.seen = PublishedQuotes()
        self.error: BridgeError | None = None
        self.failed = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ExchangeBridge:
        # No sock_read here: a WebSocket may be quiet for long; each wait below has its own timeout.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.settings.connect_timeout)
        self._session = aiohttp.ClientSession(timeout=timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use the bridge as an async context manager"
        return self._session

    async def prepare(self) -> None:
        """Start-up checks before the feed is served; raises BridgeError naming what was refused."""

    @property
    def latest(self) -> dict[str, Quote]:
        """The latest price published for each hub symbol."""
        return self.seen.latest

    def publish(self, quote: Quote) -> bool:
        """Validate and publish one price, unless this run published it already; whether it was.

        A quote-only update (``price`` None) takes the last price published for its symbol (a trade's,
        or the start-up snapshot's): every tick has a price. Before there is one it is skipped (counted
        in ``unpriced``)."""
        if quote.price is None:
            known = self.seen.latest.get(quote.symbol)
            if known is None:
                self.unpriced += 1
                return False
            quote = quote._replace(price=known.price)
        fields = quote.fields()
        try:
            symbol, price = check_symbol(quote.symbol), check_price(quote.price)
            check_fields(fields)
        except TickRejected as exc:
            self.malformed[exc.reason] += 1
            log.debug("skipped %s", exc)
            return False
        if self.seen.is_repeat(quote):
            self.repeats += 1
            return False
        self.feed.publish(symbol, price, quote.ts, fields)
        self.published += 1
        return True

    async def run(self) -> None:
        """The feed's producer: streams until cancelled, or until the exchange refuses us."""
        try:
            await self.stream()
        except* BridgeError as group:
            error: BaseException = group
            while isinstance(error, BaseExceptionGroup):  # task groups nest: report the refusal itself
                error = error.exceptions[0]
            self.error = error  # type: ignore[assignment]
            self.failed.set()  # serve_bridge raises it: the command prints it once and exits 2

    async def stream(self) -> None:
        plans = self.adapter.plans()
        self.connections = [ConnectionStats(p.url, p.streams) for p in plans]
        async with asyncio.TaskGroup() as tasks:
            for plan, stats in zip(plans, self.connections, strict=True):
                tasks.create_task(self._connection(plan, stats))

    async def _connection(self, plan: ConnectionPlan, stats: ConnectionStats) -> None:
        backoff = Backoff(self.settings.reconnect_min, self.settings.reconnect_max)
        pacer = MessagePacer(self.adapter.messages_per_second)
        loop = asyncio.get_running_loop()
        while True:
            quotes_before, started = stats.quotes, loop.time()
            reason = await self._session_once(plan, stats, pacer)
            stats.reconnects[reason] += 1
            stats.state = "reconnecting"
            if stats.quotes > quotes_before or loop.time() - started >= self.settings.stale_timeout:
                backoff.reset()  # the session worked (prices, or a quiet but live link): start small again
            if reason == "max_age":
                continue  # a planned rotation of a healthy connection: at once
            delay = backoff.next_delay()
            log.info("%s: reconnecting in %.2fs (%s)", self.settings.name, delay, reason)
            await asyncio.sleep(delay)

    async def _session_once(self, plan: ConnectionPlan, stats: ConnectionStats, pacer: MessagePacer) -> str:
        """One connection from connect to close; returns why it ended."""
        s = self.settings
        stats.state = "connecting"
        try:
            async with asyncio.timeout(s.connect_timeout):
                ws = await self.session.ws_connect(
                    plan.url, autoping=True, timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=s.close_timeout)
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            stats.last_error = f"connect: {type(exc).__name__}: {exc}"[:300]
            log.warning("%s: cannot connect to %s: %s", s.name, plan.url.split("?")[0], stats.last_error)
            return "connect_failed"
        async with ws:
            stats.state, stats.connected_at = "connected", time.time()
            stats.connects, stats.unread = stats.connects + 1, 0
            log.info("%s: connected to %s (%d streams)", s.name, plan.url.split("?")[0], plan.streams)
            try:
                for message in plan.messages:
                    await pacer.wait()
                    await ws.send_str(message)
                return await self._read(ws, stats)
            except (aiohttp.ClientError, OSError) as exc:
                stats.last_error = f"{type(exc).__name__}: {exc}"[:300]
                return "error"
            finally:
                stats.connected_at = None

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, stats: ConnectionStats) -> str:
        loop = asyncio.get_running_loop()
        s = self.settings
        deadline = loop.time() + s.max_age if s.max_age else None
        while True:
            wait = s.stale_timeout
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
                if wait <= 0:
                    return "max_age"
            try:
                # aiohttp answers pings inside receive() and restarts this timeout on each frame.
                msg = await ws.receive(timeout=wait)
            except TimeoutError:
                if deadline is not None and loop.time() >= deadline:
                    return "max_age"
                stats.last_error = f"no message for {s.stale_timeout:g}s"
                log.warning("%s: stale connection, %s", s.name, stats.last_error)
                return "stale"
            stats.last_message_at = time.time()
            if msg.type is aiohttp.WSMsgType.TEXT:
                stats.messages += 1
                try:
                    quotes = self.adapter.decode(msg.data)
                except Malformed as exc:
                    self._unread(stats, exc.reason, str(exc))
                    log.debug("%s: malformed message skipped: %s", s.name, exc)
                    continue
                except Reconnect as exc:
                    log.info("%s: %s", s.name, exc)
                    return "server_shutdown"
                except BridgeError:
                    raise
                except Exception:  # an adapter bug must not stop the other symbols' prices
                    self._unread(stats, "decode_error", "decode_error")
                    log.exception("%s: cannot decode a message", s.name)
                    continue
                if not quotes:
                    self.ignored += 1
                    continue
                stats.quotes += len(quotes)
                stats.last_quote_at, stats.unread = stats.last_message_at, 0
                for quote in quotes:
                    self.publish(quote)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                stats.messages += 1
                self._unread(stats, "binary", "binary frame")
            else:  # CLOSE, CLOSING, CLOSED or ERROR
                stats.last_error = f"closed: {msg.type.name} {msg.data or ''} {msg.extra or ''}".strip()[:300]
                log.warning("%s: connection %s", s.name, stats.last_error)
                return "closed"

    def _unread(self, stats: ConnectionStats, reason: str, detail: str) -> None:
        self.malformed[reason] += 1
        stats.unread += 1
        stats.last_unread = detail[:120]

    def health(self) -> dict[str, Any]:
        """The bridge's /health document: ``degraded`` names its ``reason``."""
        now = time.time()
        problems = [
            f"connection {n}: {problem}"
            for n, c in enumerate(self.connections, start=1)
            if (problem := c.problem(now, self.settings.stale_timeout)) is not None
        ]
        if self.error is not None:
            status, reason = "failed", str(self.error)
        elif not self.connections:
            status, reason = "degraded", "not connected yet"
        else:
            status, reason = ("degraded", "; ".join(problems)) if problems else ("ok", None)
        return {
            "source": self.settings.name,
            "venue": self.adapter.venue,
            "mode": self.mode,
            "status": status,
            "reason": reason,
            "error": str(self.error) if self.error else None,
            "symbols": len(self.adapter.symbols),
            "published": self.published,
            "repeats": self.repeats,
            "unpriced": self.unpriced,
            "ignored": self.ignored,
            "malformed": dict(self.malformed),
            "next_seq": self.feed.next_seq,
            "consumers": self.feed.consumers,
            "connections": [c.as_dict() for c in self.connections],
        }

    async def handle_health(self, request: Request) -> JSONResponse:
        body = self.health()
        return JSONResponse(body, status_code=200 if body["status"] in ("ok", "degraded") else 503)

    def app(self) -> Starlette:
        """The SSE source app (``/stream``, ``/``) plus ``/health``, producing with :meth:`run`."""
        return source_app(self.feed, self.run, [Route("/health", self.handle_health)])
