"""The synchronous twin, for scripts and bots without asyncio: sseclient-py on a streaming requests
response. The same behaviour as the aiohttp client (tickhub.client_aio): both keep their state in
:class:`~tickhub.client_stream.StreamState` and call the routes of :class:`~tickhub.client_rest.HubApi`.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import requests
import sseclient
import stamina

from .client_models import HubError, Snapshot, Tick
from .client_rest import Call, HubApi, retry_on
from .client_stream import ERROR_BODY_MAX, SubscriptionBase, base_url, describe, refusal

T = TypeVar("T")

#: The hub could not be reached, or the link failed.
TRANSPORT_ERRORS = (requests.RequestException, OSError)
#: What a REST call is tried again on: the hub unreachable, busy or failing.
TRANSPORT_ERRORS_OR_BUSY = retry_on(TRANSPORT_ERRORS)
#: sseclient-py drops an event without data, so the hub's ``retry:`` frame is read from the bytes.
RETRY_LINE = re.compile(rb"(?m)^retry: ?([0-9]{1,9})\r?$")


class SyncSubscription(SubscriptionBase):
    """The hub's stream as an iterator of :class:`Tick` and :class:`Snapshot`; see :func:`subscribe`.

    :meth:`close` may be called from any thread (a signal handler, a supervisor): it shuts the
    connection, so a blocked read returns at once, and iterating ends.
    """

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        # The read timeout is the stale watchdog: no byte (tick or heartbeat) for that long and the link is made again.
        self.timeouts = (self.connect_timeout, self.stale_timeout)
        self._http = requests.Session()
        self._closed = threading.Event()
        self._response: requests.Response | None = None
        self._events = self._follow()

    def __iter__(self) -> SyncSubscription:
        return self

    def __next__(self) -> Tick | Snapshot:
        return next(self._events)

    def __enter__(self) -> SyncSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End the subscription, from this thread or any other."""
        self._closed.set()
        response = self._response
        if response is not None:  # wake a read blocked in another thread: shutdown, unlike close, does
            sock = getattr(getattr(response.raw, "connection", None), "sock", None)
            with contextlib.suppress(OSError, AttributeError):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(ValueError):  # "generator already executing": that thread sees the flag
            self._events.close()

    def _follow(self) -> Iterator[Tick | Snapshot]:
        try:
            while not self._closed.is_set():
                cause: str | Exception = "the hub ended the stream"
                try:
                    yield from self._connection()
                except (HubError, *TRANSPORT_ERRORS, ValueError) as exc:  # ValueError: bytes that are not UTF-8
                    cause = exc
                if self._closed.is_set():
                    return
                self._closed.wait(self.state.lost(cause))
        finally:
            self._http.close()

    def _connection(self) -> Iterator[Tick | Snapshot]:
        state = self.state
        response = self._http.get(
            state.url, params=state.params(), headers=state.headers(), stream=True, timeout=self.timeouts
        )
        self._response = response
        try:
            if self._closed.is_set():  # closed while connecting: nobody shut this one down
                return
            body = b"" if response.status_code == 200 else response.raw.read(ERROR_BODY_MAX, decode_content=True)
            kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            error = refusal(state.url, response.status_code, kind, body, response.headers.get("Retry-After"))
            if error is not None:
                raise error
            state.connected()
            for event in sseclient.SSEClient(self._chunks(response)).events():
                item = state.handle(event.event, event.data, event.id)
                if item is not None:
                    yield item
        finally:
            self._response = None
            response.close()

    def _chunks(self, response: requests.Response) -> Iterator[bytes]:
        """The body as it arrives, its ``retry:`` noted, ending once :meth:`close` was called."""
        line_start = True
        for chunk in response.iter_content(chunk_size=None):
            # Only whole lines count: a chunk may begin in the middle of one.
            lines = chunk if line_start else chunk[chunk.find(b"\n") + 1 :] if b"\n" in chunk else b""
            line_start = chunk.endswith(b"\n")
            if b"retry:" in lines and (match := RETRY_LINE.search(lines)):
                self.state.retry_hint(int(match[1]))
            yield chunk
            if self._closed.is_set():
                return


def subscribe(
    url: str, symbols: Iterable[str] | None = None, last_event_id: str | None = None, **options: Any
) -> SyncSubscription:
    """Follow the hub at ``url``: ``for event in subscribe(url, ["BTCUSD"])``. The same events, options and
    guarantees as the asyncio ``tickhub.client.subscribe``; stop it with ``close()`` from any thread."""
    return SyncSubscription(url, symbols, last_event_id, **options)


class HubClient(HubApi):
    """The REST routes with an API key: ``hub.buy("BTCUSD", Decimal("0.01"))``. Every request has a
    ``timeout`` (seconds); one that cannot reach the hub, or gets 429 or 5xx, is tried ``attempts`` times
    with jittered backoff, an order with the same Idempotency-Key. Failures raise :class:`HubError`.
    """

    subscription = SyncSubscription

    def __init__(self, url: str, api_key: str | None = None, *, timeout: float = 10.0, attempts: int = 3) -> None:
        self.url = base_url(url)
        self.timeout = timeout
        self.attempts = attempts
        self._http = requests.Session()
        if api_key:
            self._http.headers["Authorization"] = f"Bearer {api_key}"

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call[T]) -> T:
        try:
            for attempt in stamina.retry_context(on=TRANSPORT_ERRORS_OR_BUSY, attempts=self.attempts, wait_max=2.0):
                with attempt:
                    response = self._http.request(
                        call.method,
                        self.url + call.path,
                        params=call.params,
                        data=call.content(),
                        headers=call.headers(),
                        timeout=self.timeout,
                    )
                    return call.outcome(response.status_code, response.content, response.headers)
        except TRANSPORT_ERRORS as exc:
            raise HubError(None, "unreachable", f"{call.method} {self.url}{call.path}: {describe(exc)}") from exc
        raise AssertionError("unreachable: the retry loop returns or raises")
