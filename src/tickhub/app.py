"""The app factory: routes, error handlers and a lifespan that owns the Hub."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from .config import Settings
from .errors import EXCEPTION_HANDLERS
from .hub import Hub
from .routes import ROUTES


def create_app(settings: Settings) -> Starlette:
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
    return app
