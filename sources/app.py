"""The HTTP side of a source: a Starlette app serving a SourceFeed with sse-starlette.

``GET /stream`` is an ``EventSourceResponse`` fed the feed's ready byte chunks (many events joined per
chunk; nothing is encoded per consumer), with sse-starlette's heartbeat comments, send timeout and
client-disconnect handling. ``GET /`` tells where the feed's seqs stand. The producer (the mock's
random walk, a bridge's exchange connections) runs in the app's lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from .feed import SourceFeed

log = logging.getLogger("tickhub.source")


def _ping() -> ServerSentEvent:
    return ServerSentEvent(comment="ping", sep="\n")


class FeedResponse(EventSourceResponse):
    """One consumer's ``text/event-stream`` of a feed."""

    def __init__(self, feed: SourceFeed, last_event_id: str | None) -> None:
        super().__init__(
            feed.frames(last_event_id, lambda: self.active),  # active: False once the consumer has gone
            headers={"Cache-Control": "no-cache"},
            ping=feed.heartbeat,
            ping_message_factory=_ping,
            sep="\n",
            send_timeout=feed.send_timeout,
        )

    @staticmethod
    async def _listen_for_exit_signal() -> None:
        # sse-starlette ends every stream in the process when any uvicorn server there is told to exit;
        # a source's streams end when its own feed closes (SourceServer.request_stop), cleanly.
        await anyio.sleep_forever()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:  # the consumer stopped reading: it resumes by Last-Event-ID
            log.warning("a consumer read nothing for %gs: its stream is closed", self.send_timeout)


def source_app(
    feed: SourceFeed, producer: Callable[[], Awaitable[None]] | None = None, routes: Sequence[BaseRoute] = ()
) -> Starlette:
    """A Starlette app serving ``feed`` at ``/stream`` (and ``/`` for info, plus ``routes``), running
    ``producer`` for as long as it is served."""

    async def stream(request: Request) -> FeedResponse:
        """``GET /stream``: from Last-Event-ID (the header, or ``?last_event_id=``: browsers cannot set a
        header on a first connect); without one, live, after the newest event of each symbol if
        ``latest_first``."""
        last = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
        return FeedResponse(feed, last)

    async def info(request: Request) -> JSONResponse:
        return JSONResponse(feed.info())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(producer()) if producer is not None else None
        try:
            yield
        finally:
            feed.close()
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = Starlette(routes=[Route("/stream", stream), Route("/", info), *routes], lifespan=lifespan)
    app.state.feed = feed
    return app
