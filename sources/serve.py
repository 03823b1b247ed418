"""Serving a source app with uvicorn (uvloop and httptools where installed), in a process or a test.

Signals are the caller's (``serve_until_signal`` installs them on the loop) and only ask the server to
stop: the feed closes first, so every SSE stream ends cleanly after what it was sent (uvicorn waits for
open responses, and a stream never ends by itself), then uvicorn stops accepting and runs the lifespan
shutdown, which stops the producer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import AsyncIterator, Iterator

import uvicorn
from starlette.applications import Starlette

from .feed import SourceFeed

log = logging.getLogger("tickhub.source")

GRACE = 3  # seconds uvicorn waits for open responses on a stop before cancelling them
STOP_TIMEOUT = 15.0  # seconds ``serving`` waits for its server to stop


class SourceServer(uvicorn.Server):
    """uvicorn's server for one source app; :meth:`request_stop` ends its streams, then the server."""

    def __init__(self, app: Starlette, log_level: str = "warning") -> None:
        config = uvicorn.Config(
            app,
            log_level=log_level,
            log_config=None,
            access_log=False,
            lifespan="on",
            ws="none",
            proxy_headers=False,
            timeout_graceful_shutdown=GRACE,
        )
        super().__init__(config)
        self.feed: SourceFeed = app.state.feed
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The process's signals belong to serve_until_signal (and to nobody, in a test): a second
        # uvicorn server in the process must not be stopped by this one's handlers, nor take them.
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()

    def request_stop(self) -> None:
        """End every stream, then stop serving; a second request stops without waiting for streams."""
        if self.should_exit:
            self.force_exit = True
        self.feed.close()
        self.should_exit = True


def listen_socket(host: str, port: int) -> socket.socket:
    """The source's listening socket (port 0 picks a free one); bound here so a busy port is an OSError
    the command reports in one line, and so a test knows the port before serving."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = info[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


@contextlib.asynccontextmanager
async def serving(app: Starlette, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[int]:
    """Serve ``app`` on host:port in this loop (a test's, an embedding program's) until the block ends;
    yields the bound port. On exit every stream ends and the producer stops."""
    sock = listen_socket(host, port)
    server = SourceServer(app)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    ready = asyncio.create_task(server.ready.wait())
    try:
        await asyncio.wait({task, ready}, timeout=STOP_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if not server.ready.is_set():
            cause = task.exception() if task.done() and not task.cancelled() else None
            raise RuntimeError("the source did not start") from cause
        yield sock.getsockname()[1]
    finally:
        ready.cancel()
        server.request_stop()
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await asyncio.gather(task, ready, return_exceptions=True)
        finally:
            sock.close()


async def serve_until_signal(app: Starlette, host: str, port: int) -> None:
    """Serve ``app`` on host:port until SIGINT or SIGTERM, then stop cleanly (a second signal: at once)."""
    sock = listen_socket(host, port)
    server = SourceServer(app)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.request_stop)
    try:
        log.info("source %s serving on http://%s:%d/stream", server.feed.name, host, sock.getsockname()[1])
        await server.serve(sockets=[sock])
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        sock.close()
