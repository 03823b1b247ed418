"""The app factory: routes, error handlers and a lifespan that owns the Hub."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Receive, Scope, Send

from .config import Settings
from .connections import framed_twice, refuse_framed_twice
from .errors import EXCEPTION_HANDLERS
from .hub import Hub
from .routes import ROUTES
from .stream import serve_stream


class HubApp:
    """The hub's ASGI app: Starlette, with one fast lane.

    ``GET /stream`` goes straight to the stream handler instead of through Starlette's middleware,
    which wrap ``send`` in two more coroutines for every message; with thousands of subscribers
    that was ~13% of the fan-out's CPU (BENCHMARKS.md, "Profile"). The stream answers its errors
    with the same exception handlers. With CORS configured every request takes the Starlette path,
    so the CORS middleware sees the stream too.
    """

    def __init__(self, app: Starlette, fast_stream: bool) -> None:
        self.app = app
        self.fast_stream = fast_stream

    @property
    def state(self) -> State:
        return self.app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Checked here, not in a wrapper of its own: an ASGI layer's frame lives as long as each stream
        # (10,000 idle subscribers paid 1.4 KiB each for one).
        if scope["type"] == "http" and framed_twice(scope):
            await refuse_framed_twice(scope, receive, send)
            return
        if self.fast_stream and scope["type"] == "http" and scope["path"] == "/stream" and scope["method"] == "GET":
            scope["app"] = self.app
            await serve_stream(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def create_app(settings: Settings) -> HubApp:
    """A hub application; everything long-lived is created in its lifespan, on the running loop."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        hub = Hub(settings)
        await hub.start()
        app.state.hub = hub
        try:
            yield
        finally:
            await hub.stop()

    middleware = []
    if settings.cors_origins:  # without it, browsers allow only same-origin calls
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
                expose_headers=["Location", "Idempotent-Replayed", "Retry-After"],
            )
        )
    app = Starlette(routes=ROUTES, exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan, middleware=middleware)
    app.state.settings = settings
    return HubApp(app, fast_stream=not settings.cors_origins)
