"""A subscriber as the fan-out sees it, and how its writes are driven by hand without a task."""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

Write = Callable[[bytes], Coroutine[Any, Any, None]]
Finish = Callable[[], Coroutine[Any, Any, None]]
SymbolFilter = frozenset[str] | None


class Subscriber:
    """One open stream: how to write to it, end it, or drop its connection, and where it stands."""

    __slots__ = (
        "abort",
        "busy",
        "closed",
        "cursor",
        "detached",
        "direct",
        "finish",
        "overflows",
        "resync",
        "symbols",
        "write",
    )

    def __init__(
        self, write: Write, finish: Finish, symbols: SymbolFilter, abort: Callable[[], None] | None = None
    ) -> None:
        self.write = write
        self.finish = finish
        #: Drops the connection at once: for a client that stopped reading, whose stream cannot be ended
        #: cleanly (the end is one more write) and whose socket would otherwise stay open.
        self.abort = abort
        self.symbols = symbols
        #: Where its writes have reached: every frame before it is written, or handed to the write in
        #: flight. Kept up to date only while it is blocked; an idle one's position is its group's.
        self.cursor = 0
        #: Set (to the reason) when the stream lost continuity while a write to it was blocked.
        self.resync: str | None = None
        #: uvicorn's request cycle (httptools, chunked) when the flusher may write to its transport itself:
        #: one ``transport.write`` of a chunk framed once for everyone, instead of an ASGI ``send`` per
        #: subscriber that frames and copies the body again (see :func:`direct_ok`). None: ASGI only.
        self.direct: Any = None
        self.busy = False
        self.detached = False
        self.overflows = 0
        #: Resolved with the reason when the hub ends this subscription.
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()


@types.coroutine
def _resume(coro: Coroutine[Any, Any, None], yielded: Any) -> Generator[Any, Any, None]:
    """Finish a coroutine that was started by hand and suspended, yielding ``yielded``."""
    while True:
        try:
            sent = yield yielded
        except BaseException as exc:  # cancellation and timeouts reach the write it belongs to
            try:
                yielded = coro.throw(exc)
            except StopIteration:
                return
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration:
                return


def start_write(coro: Coroutine[Any, Any, None]) -> Awaitable[None] | None:
    """Run ``coro`` until it first suspends: None if it finished, else an awaitable for the rest."""
    try:
        yielded = coro.send(None)
    except StopIteration:
        return None
    return _resume(coro, yielded)


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked HTTP/1.1 body, as uvicorn's ``send`` frames it."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def direct_cycle(send: Any) -> Any:
    """uvicorn's request cycle behind ``send`` if the fan-out may write to its transport directly: the
    httptools protocol (h11 keeps its own framing state), a chunked response already started."""
    cycle = getattr(send, "__self__", None)
    if (
        type(cycle).__module__.endswith("httptools_impl")
        and getattr(cycle, "chunked_encoding", None) is True
        and getattr(cycle, "response_started", False)
        and hasattr(cycle, "flow")
        and hasattr(cycle, "transport")
    ):
        return cycle
    return None


def abort(sub: Subscriber) -> None:
    """Drop its connection at once, if it can be."""
    if sub.abort is not None:
        with contextlib.suppress(Exception):
            sub.abort()
