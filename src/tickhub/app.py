"""The app factory: routes, error handlers and a lifespan that owns the Hub."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette

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

    app = Starlette(routes=ROUTES, exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan)
    app.state.settings = settings
    return app
