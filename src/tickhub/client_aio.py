"""The asyncio client on aiohttp: :func:`subscribe` and :class:`AsyncHubClient`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any, TypeVar

import aiohttp
import stamina

from .client_models import HubError, Snapshot, Tick
from .client_rest import Call, HubApi, retry_on
from .client_stream import ERROR_BODY_MAX, SubscriptionBase, base_url, describe, refusal
from .wire import SSEParser

T = TypeVar("T")

#: The hub could not be reached, or the link failed.
TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)
#: What a REST call is tried again on: the hub unreachable, busy or failing.
TRANSPORT_ERRORS_OR_BUSY = retry_on(TRANSPORT_ERRORS)
#: An event as large as a snapshot of every symbol still fits; anything larger is dropped and counted.
MAX_EVENT = 1 << 25


class Subscription(SubscriptionBase):
    """The hub's stream as an async iterator of :class:`Tick` and :class:`Snapshot`; see :func:`subscribe`.

    Use it in ``async with`` (or call :meth:`aclose`) so its connection is closed when you stop early;
    to stop it from elsewhere, cancel the task iterating it.
    """

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        # sock_read is the stale watchdog: no byte (tick or heartbeat) for that long and the link is made again.
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.connect_timeout, sock_read=self.stale_timeout
        )
        self._events = self._follow()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Tick | Snapshot:
        return await self._events.__anext__()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection; iterating ends."""
        await self._events.aclose()

    async def _follow(self) -> AsyncIterator[Tick | Snapshot]:
        async with aiohttp.ClientSession(timeout=self.timeout) as session:
            while True:
                cause: str | Exception = "the hub ended the stream"
                try:
                    async with contextlib.aclosing(self._connection(session)) as items:
                        async for item in items:
                            yield item
                except (HubError, *TRANSPORT_ERRORS) as exc:
                    cause = exc
                await asyncio.sleep(self.state.lost(cause))

    async def _connection(self, session: aiohttp.ClientSession) -> AsyncIterator[Tick | Snapshot]:
        state = self.state
        async with session.get(state.url, params=state.params(), headers=state.headers()) as response:
            body = b"" if response.status == 200 else await response.content.read(ERROR_BODY_MAX)
            error = refusal(
                state.url, response.status, response.content_type, body, response.headers.get("Retry-After")
            )
            if error is not None:
                raise error
            state.connected()
            parser = SSEParser(max_line=MAX_EVENT, max_event=MAX_EVENT)
            async for chunk in response.content.iter_any():
                for event in parser.feed(chunk):
                    item = state.handle(event.event, event.data, event.id)
                    if item is not None:
                        yield item
                state.retry_hint(parser.retry)
                if parser.oversized:
                    state.skipped(parser.oversized, f"an event above {MAX_EVENT} bytes")
                    parser.oversized = 0


def subscribe(
    url: str, symbols: Iterable[str] | None = None, last_event_id: str | None = None, **options: Any
) -> Subscription:
    """Follow the hub at ``url``: ``async for event in subscribe(url, ["BTCUSD"])``.

    Yields a :class:`Snapshot` first (unless resuming from ``last_event_id``), then every :class:`Tick`,
    and a Snapshot again whenever the hub cannot resume (``Snapshot.resync`` says why). Reconnects after
    any failure, resuming by ``Last-Event-ID``; a tick seen already (same ``(source, seq)``) is dropped
    and counted in ``dropped``. Options: see :class:`~tickhub.client_stream.SubscriptionBase`. A refusal
    that will not change (400 ``bad_symbol``, 404) raises :class:`HubError`.
    """
    return Subscription(url, symbols, last_event_id, **options)


class AsyncHubClient(HubApi):
    """The REST routes with an API key, as coroutines: ``await hub.buy("BTCUSD", Decimal("0.01"))``.

    Use it in ``async with`` (or call :meth:`close`). Every request has a ``timeout`` (seconds); one that
    cannot reach the hub, or gets 429 or 5xx, is tried ``attempts`` times with jittered backoff, an
    order with the same Idempotency-Key. Failures raise :class:`HubError`.
    """

    subscription = Subscription

    def __init__(self, url: str, api_key: str | None = None, *, timeout: float = 10.0, attempts: int = 3) -> None:
        self.url = base_url(url)
        self.api_key = api_key
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.attempts = attempts
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AsyncHubClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _send(self, call: Call[T]) -> T:
        if self._session is None:  # made on first use, inside the running loop
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
            self._session = aiohttp.ClientSession(headers=headers, timeout=self.timeout)
        try:
            async for attempt in stamina.retry_context(
                on=TRANSPORT_ERRORS_OR_BUSY, attempts=self.attempts, wait_max=2.0
            ):
                with attempt:
                    async with self._session.request(
                        call.method,
                        self.url + call.path,
                        params=call.params,
                        data=call.content(),
                        headers=call.headers(),
                    ) as response:
                        return call.outcome(response.status, await response.read(), response.headers)
        except TRANSPORT_ERRORS as exc:
            raise HubError(None, "unreachable", f"{call.method} {self.url}{call.path}: {describe(exc)}") from exc
        raise AssertionError("unreachable: the retry loop returns or raises")
