"""The fan-out baseline: a hub built the obvious way from sse-starlette, for comparison in the same run.

Ingest is tickhub's own (an aiohttp client, tickhub.wire's parser and validation), so only fan-out
differs: every subscriber has an ``asyncio.Queue``; each tick is put in every queue; each
subscriber's generator encodes its events itself (JSON and SSE framing, once per subscriber) and
sse-starlette writes each event on its own. Run under uvicorn with uvloop and httptools, like the hub.

    python -m benchmarks.naive_hub --port 8200 --source http://127.0.0.1:8101/stream
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import orjson
import uvicorn
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tickhub.wire import SSEParser, TickRejected, parse_source_tick


class NaiveHub:
    def __init__(self, source: str) -> None:
        self.source = source
        self.queues: set[asyncio.Queue[dict]] = set()
        self.next_id = 1

    async def ingest(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_read=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    async with session.get(self.source) as resp:
                        parser = SSEParser()
                        async for chunk in resp.content.iter_any():
                            for event in parser.feed(chunk):
                                if event.event == "tick":
                                    self.publish(event.data, event.id)
                except (aiohttp.ClientError, TimeoutError):
                    await asyncio.sleep(0.5)

    def publish(self, data: str, event_id: str | None) -> None:
        try:
            t = parse_source_tick(data, event_id)
        except TickRejected:
            return
        tick = {"id": str(self.next_id), "source": "bench", "symbol": t.symbol, "price": t.price, "ts": t.ts}
        tick["seq"] = t.seq
        self.next_id += 1
        for queue in self.queues:
            queue.put_nowait(tick)

    async def stream(self, request: Request) -> EventSourceResponse:
        queue: asyncio.Queue[dict] = asyncio.Queue()
        self.queues.add(queue)

        async def events() -> AsyncIterator[dict]:
            try:
                while True:
                    tick = await queue.get()
                    yield {"event": "tick", "id": tick["id"], "data": orjson.dumps(tick).decode()}
            finally:
                self.queues.discard(queue)

        return EventSourceResponse(events(), ping=15)


def build(source: str) -> Starlette:
    hub = NaiveHub(source)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(hub.ingest())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"subscribers": len(hub.queues), "last_id": hub.next_id - 1})

    return Starlette(routes=[Route("/stream", hub.stream), Route("/health", health)], lifespan=lifespan)


if __name__ == "__main__":
    # uvicorn.run here rather than a helper in benchmarks.common: importing that module (asyncpg,
    # psutil, aiohttp) doubled this baseline's p99, measured, most likely through longer collections.
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--source", required=True)
    args = parser.parse_args()
    uvicorn.run(
        build(args.source),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        backlog=4096,
    )
