"""The hub's client connections: dropping a stalled one at once, closing those that never send a request
or never finish its body, JSON for malformed requests, the process's open-files limit, and a cap on open
connections.

uvicorn's ``timeout_keep_alive`` starts only after a response and stops at the first byte received, so
a connection that sends nothing, half a request head, or a head and half a body, is held forever: enough
of them exhaust the process's file descriptors and every new client, ``/ping`` included, is refused. Its
HTTP protocol is subclassed here to close such connections after ``TICKHUB_HEADER_TIMEOUT`` and
``TICKHUB_BODY_TIMEOUT``, and to answer a request its parser refuses in JSON like every other error.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from .errors import error_response

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]

log = logging.getLogger("tickhub.connections")

#: SO_LINGER on, 0 s: close() resets the connection and frees what is queued instead of sending it first.
LINGER_RESET = struct.pack("ii", 1, 0)
#: Share of the open-files limit past which open connections are worth a warning.
FD_WARNING_SHARE = 0.9
#: Least seconds between two such warnings.
FD_WARNING_EVERY = 60.0


def abort_with_reset(transport: Any) -> Callable[[], None] | None:
    """A callable that drops ``transport``'s connection at once, or None if it has no way to.

    A plain abort closes the socket with a FIN queued behind the unsent bytes; for a client that never
    reads them the kernel keeps the socket in FIN-WAIT-1, holding its whole send buffer, until its
    retries run out (minutes). Lingering 0 s makes the close a reset that frees both at once.
    """
    if transport is None or not hasattr(transport, "abort"):
        return None

    def abort() -> None:
        sock = transport.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        except (AttributeError, OSError, ValueError):  # no socket, or one that cannot linger: abort as it is
            pass
        transport.abort()

    return abort


def set_nodelay(transport: Any) -> None:
    """Send small writes at once. uvloop leaves Nagle's algorithm on for accepted connections; with the
    client's delayed ACK, a response written in two parts (head, body) then waits ~40 ms for the second,
    and so does every small SSE flush that follows one still unacknowledged."""
    sock = transport.get_extra_info("socket")
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError, ValueError):  # not TCP (a Unix socket): nothing to do
        pass


def raise_open_files_limit() -> int | None:
    """Raise this process's soft limit on open files to its hard limit (each connection is a file);
    return the limit now in force, or None where there is none to read."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:  # e.g. macOS caps the soft limit below an infinite hard one
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, target, exc)
    limit = open_files_limit()
    log.info("open-files limit: %s (was %s, hard limit %s)", limit, soft, hard)
    return limit


def open_files_limit() -> int | None:
    """The soft limit on this process's open files, or None if unknown or unlimited."""
    if resource is None:
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


class HeaderTimeout:
    """Mixed into uvicorn's HTTP protocol: a connection must send a whole request head within
    ``header_timeout`` seconds of opening and of each response's end, or it is closed.

    The timer is armed once per connection and per response, never per write: a stream, or a request
    whose body comes slowly, has its head already and is left alone.
    """

    header_timeout: float = 5.0
    fd_limit: int | None = None
    warn_connections: int | None = None
    _head_timer: asyncio.TimerHandle | None = None
    _warned_at = float("-inf")

    # Attributes of uvicorn's protocol this relies on.
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    connections: set[Any]
    cycle: Any

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        set_nodelay(transport)
        self._arm_head_timer()
        if self.warn_connections is not None and len(self.connections) >= self.warn_connections:
            self._warn_near_fd_limit()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self._head_timer is not None and self.cycle is not None and not self.cycle.response_complete:
            self._disarm_head_timer()  # a whole head arrived: the request is being served

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        # A pipelined request already has its head; otherwise the next one must come in time.
        if self.cycle.response_complete and not self.transport.is_closing():
            self._arm_head_timer()

    def handle_websocket_upgrade(self, *args: Any) -> None:
        self._disarm_head_timer()  # the connection is the WebSocket protocol's from here on
        super().handle_websocket_upgrade(*args)  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            log.debug("closing a connection that sent no whole request head in %.1fs", self.header_timeout)
            self.transport.close()

    def _warn_near_fd_limit(self) -> None:
        now = time.monotonic()
        cls = type(self)
        if now - cls._warned_at >= FD_WARNING_EVERY:
            cls._warned_at = now
            log.warning(
                "%d open connections, near this process's limit of %s open files: past it new connections"
                " fail; raise the limit (ulimit -n) or set TICKHUB_LIMIT_CONCURRENCY",
                len(self.connections),
                self.fd_limit,
            )


def closing_json_error(status: int, code: str, message: str, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A whole HTTP/1.1 JSON error response that ends the connection, for answers the protocol writes
    itself (no ASGI app behind them): the same body as ``errors.error_response``."""
    body = orjson.dumps({"error": {"code": code, "message": message}})
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode()]
    head += [name + b": " + value for name, value in default_headers]
    head += [b"content-type: application/json", b"content-length: %d" % len(body), b"connection: close"]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def answer_and_close(protocol: Any, status: int, code: str, message: str) -> None:
    """End a connection of uvicorn's HTTP ``protocol`` with a JSON error, written unless a response is
    under way there (its middle is no place for another); the request being served, if any, sees a
    disconnect and whatever its app still sends is dropped."""
    cycle = protocol.cycle
    busy = bool(getattr(protocol, "pipeline", None))  # httptools: an earlier request is still being answered
    if cycle is not None and not cycle.response_complete:
        busy = busy or cycle.response_started
        cycle.disconnected = True
        cycle.message_event.set()
    if not busy:
        protocol.transport.write(closing_json_error(status, code, message, protocol.server_state.default_headers))
    protocol.transport.close()


class BodyTimeout:
    """Mixed into uvicorn's HTTP protocol: once a request head is in, its whole body must follow within
    ``body_timeout`` seconds, or the request is answered 408 and the connection closed.

    Timed is the client, not the app: nothing is awaited from a request whose response has started, or
    one queued behind a pipelined request, and the clock restarts while the hub itself stopped reading.
    """

    body_timeout: float = 10.0
    _body_timer: asyncio.TimerHandle | None = None
    _timed_cycle: Any = None

    # Attributes of uvicorn's protocol this relies on.
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any
    flow: Any

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        self._watch_body()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._watch_body()  # a pipelined request starts now; its body is awaited from here

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_body_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def _awaited_body(self) -> Any:
        """The request cycle whose body the client still owes, or None."""
        cycle = self.cycle
        if cycle is None or not cycle.more_body or cycle.response_started or cycle.disconnected:
            return None
        return None if getattr(self, "pipeline", None) else cycle  # httptools: queued behind another request

    def _watch_body(self) -> None:
        cycle = self._awaited_body()
        if cycle is None:
            self._stop_body_timer()
        elif cycle is not self._timed_cycle or self._body_timer is None:
            self._start_body_timer(cycle)

    def _start_body_timer(self, cycle: Any) -> None:
        self._stop_body_timer()
        self._timed_cycle = cycle
        self._body_timer = self.loop.call_later(self.body_timeout, self._body_timed_out)

    def _stop_body_timer(self) -> None:
        # Assigned only when set: every attribute a connection gets costs it memory (10,000 streams).
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if self._timed_cycle is not None:
            self._timed_cycle = None

    def _body_timed_out(self) -> None:
        self._body_timer = None
        cycle = self._awaited_body()
        if cycle is None or cycle is not self._timed_cycle or self.transport.is_closing():
            return
        if self.flow.read_paused:  # the app has not taken what came: the client is not the one waiting
            self._start_body_timer(cycle)
            return
        log.debug("answering 408 to a request whose body did not arrive in %.1fs", self.body_timeout)
        message = f"the request body did not arrive within {self.body_timeout:g}s of its head"
        answer_and_close(self, 408, "body_timeout", message)


class JSONBadRequest:
    """Mixed into uvicorn's HTTP protocol: a request its parser refuses (bytes that are not HTTP/1.1, a
    body framed two ways, a control character in a header, an unknown method) is answered with a JSON
    400 like every other error, instead of uvicorn's plain text, and the connection is closed."""

    def send_400_response(self, msg: str) -> None:
        answer_and_close(self, 400, "bad_request", "the request is not valid HTTP/1.1")


def http_protocol(header_timeout: float, body_timeout: float = 10.0) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools where installed, else h11) with the header and body timeouts,
    JSON for malformed requests, and a warning when open connections near the open-files limit in force now."""
    limit = open_files_limit()
    attributes = {
        "header_timeout": header_timeout,
        "body_timeout": body_timeout,
        "fd_limit": limit,
        "warn_connections": None if limit is None else int(limit * FD_WARNING_SHARE),
        "_warned_at": float("-inf"),
    }
    return type("HubHTTPProtocol", (JSONBadRequest, BodyTimeout, HeaderTimeout, AutoHTTPProtocol), attributes)


class ConnectionLimit:
    """ASGI wrapper: past ``limit`` open connections a new request is answered 503, as JSON like every
    other error (uvicorn's own ``limit_concurrency`` answers in plain text). ``connections`` is the
    server's set of open connections, given once the server exists."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.connections: set[Any] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and len(self.connections) > self.limit:
            response = error_response(
                503, "over_capacity", "the hub has too many open connections; retry shortly", {"Retry-After": "1"}
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def framed_twice(scope: Scope) -> bool:
    """A request framed both by Content-Length and by Transfer-Encoding. A proxy in front may have read its
    body the other way (request smuggling); RFC 9112 lets a server refuse it and requires the connection
    closed either way. httptools refuses it while parsing; h11 would follow Transfer-Encoding."""
    names = [name for name, _ in scope["headers"]]
    return b"content-length" in names and b"transfer-encoding" in names


async def refuse_framed_twice(scope: Scope, receive: Receive, send: Send) -> None:
    message = "a request body framed both by Content-Length and Transfer-Encoding"
    response = error_response(400, "bad_request", message, {"Connection": "close"})
    await response(scope, receive, send)
