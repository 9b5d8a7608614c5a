"""The aiohttp application: middlewares, routes, and the one state object's life cycle."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from inbox_backend import ops, routes, webhook
from inbox_backend.egress import open_session
from inbox_backend.metrics import Metrics
from inbox_backend.middleware import errors, observe
from inbox_backend.settings import Settings
from inbox_backend.state import APP, AppState

# Bot replies still running at shutdown get this long to finish (Kubernetes' default grace is 30 s).
DRAIN_SECONDS = 10.0


def create_app(settings: Settings | None = None) -> web.Application:
    settings = settings or Settings.from_env()
    # client_max_size: request.read() answers 413 beyond it (errors maps it to body_too_large).
    app = web.Application(middlewares=[observe, errors], client_max_size=settings.max_body)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        # The session is created inside the running loop, and closed after the last background task.
        async with open_session() as session:
            state = app[APP] = AppState(settings, session, Metrics())
            yield
            await state.drain(DRAIN_SECONDS)

    app.cleanup_ctx.append(lifecycle)
    webhook.add_routes(app)
    routes.add_routes(app)
    ops.add_routes(app)
    return app
