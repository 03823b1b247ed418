"""The design-choice baseline: tickhub's own hub with /stream served by sse-starlette, one generator per subscriber.

Everything but the response is tickhub's (ingest, sequencer, the ring of encoded frames, the
writer): each subscriber's generator waits for the next tick, takes every frame since its cursor
from the ring as one bytes batch and yields it to ``EventSourceResponse``. So each tick costs one
task wake-up per subscriber, which is what tickhub's flusher (tickhub.fanout) is built to avoid.
The fan-out benchmark runs this beside tickhub to show whether sse-starlette could carry /stream.

    TICKHUB_SOURCES=bench=http://127.0.0.1:8101/stream TICKHUB_DATABASE_URL=... \
        python -m benchmarks.ring_sse_hub --port 8300
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator

import uvicorn
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tickhub.config import Settings
from tickhub.hub import Hub
from tickhub.wire import retry_frame


class TickSignal:
    """Wakes every waiting subscriber once per published tick (the cost under test)."""

    def __init__(self) -> None:
        self._next: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def fire(self) -> None:
        self._next.set_result(None)
        self._next = asyncio.get_running_loop().create_future()

    async def wait(self) -> None:
        await asyncio.shield(self._next)


def build(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        hub = Hub(settings)
        await hub.start()
        signal = TickSignal()
        publish = hub.fanout.publish

        def publish_and_signal(tick_id: int, symbol: str, frame: bytes) -> None:
            publish(tick_id, symbol, frame)
            signal.fire()

        hub.fanout.publish = publish_and_signal  # type: ignore[method-assign]
        app.state.hub, app.state.signal = hub, signal
        try:
            yield
        finally:
            await hub.stop()

    async def stream(request: Request) -> EventSourceResponse:
        hub: Hub = request.app.state.hub
        signal: TickSignal = request.app.state.signal

        async def frames() -> AsyncIterator[bytes]:
            yield retry_frame(hub.settings.retry_ms) + hub.market.snapshot_frame(None)
            cursor = hub.ring.head
            while True:
                await signal.wait()
                head = hub.ring.head
                yield hub.ring.collect(max(cursor, hub.ring.start), head)
                cursor = head

        return EventSourceResponse(frames(), ping=int(hub.settings.heartbeat))

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"last_id": str(request.app.state.hub.market.last_id or 0)})

    return Starlette(routes=[Route("/stream", stream), Route("/health", health)], lifespan=lifespan)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        build(Settings.from_env()),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        backlog=4096,
    )
