"""Running the hub under uvicorn, with a shutdown that drains streams before uvicorn waits on them."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn

from .app import HubApp, create_app
from .config import Settings
from .connections import ConnectionLimit, http_protocol


class HubServer(uvicorn.Server):
    """uvicorn's server, plus: on an exit signal, stop ingest and end every SSE stream first.

    uvicorn waits for open connections before running the lifespan shutdown, and SSE connections
    never end by themselves; so the signal handler (which only schedules work, as uvicorn's does)
    asks the hub to drain, and the streams close within the graceful-shutdown timeout.
    """

    def __init__(self, config: uvicorn.Config, app: HubApp) -> None:
        super().__init__(config)
        self.app = app
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Called once the server listens and the hub has started (a worker tells its supervisor).
        self.on_started: Callable[[], None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.on_started is not None:
            self.on_started()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._drain_soon()
        super().handle_exit(sig, frame)
        # uvicorn re-raises captured signals once it has shut down, which would end a hub that
        # drained cleanly with "killed by SIGTERM"; a clean drain exits 0 instead.
        self._captured_signals.clear()

    def request_stop(self) -> None:
        """Stop as a signal would (for embedding the server, and for tests)."""
        self._drain_soon()
        self.should_exit = True

    def _drain_soon(self) -> None:
        hub = getattr(self.app.state, "hub", None)
        if hub is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(hub.begin_drain)


def listen_socket(settings: Settings, reuse_port: bool = False) -> socket.socket:
    """The hub's listening socket, bound here rather than by uvicorn so that ``TICKHUB_SEND_BUFFER``
    applies: accepted connections inherit the listener's send buffer, which caps the kernel memory a
    subscriber that stopped reading can hold (autotuning lets it grow to megabytes). ``reuse_port``:
    one of several worker processes on the port (``tickhub hub --workers N``), the kernel spreading
    connections over them."""
    family, kind, proto, _, address = socket.getaddrinfo(
        settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if settings.send_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, settings.send_buffer)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def build_server(settings: Settings, **uvicorn_options: object) -> HubServer:
    """The hub's app under uvicorn: connections without a whole request head within
    ``TICKHUB_HEADER_TIMEOUT`` are closed, bodies slower than ``TICKHUB_BODY_TIMEOUT`` get 408, and past
    ``TICKHUB_LIMIT_CONCURRENCY`` requests get 503. A client is its connection's address unless that
    address is a proxy named in ``TICKHUB_FORWARDED_ALLOW_IPS``, whose X-Forwarded-For then names it."""
    app = create_app(settings)
    options: dict[str, object] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": False,
        "lifespan": "on",
        "timeout_graceful_shutdown": int(max(1, settings.shutdown_timeout)),
        "log_config": None,
        "http": http_protocol(settings.header_timeout, settings.body_timeout),
        # uvicorn trusts X-Forwarded-For from 127.0.0.1 by default: any local client could then pick its
        # own address and slip the per-client bounds. Only configured proxies are believed.
        "proxy_headers": bool(settings.forwarded_allow_ips),
        "forwarded_allow_ips": list(settings.forwarded_allow_ips) or None,
        # An idle keep-alive connection is one waiting for its next head: the same bound.
        "timeout_keep_alive": settings.header_timeout,
    }
    options.update(uvicorn_options)
    limiter = None if settings.limit_concurrency is None else ConnectionLimit(app, settings.limit_concurrency)
    server = HubServer(uvicorn.Config(limiter or app, **options), app)  # type: ignore[arg-type]
    if limiter is not None:
        limiter.connections = server.server_state.connections
    return server
