"""The application, assembled in one place: routes, dependencies, errors, OpenAPI and the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from typing import Any

from arq.connections import ArqRedis
from litestar import Litestar, Request
from litestar.datastructures import State
from litestar.di import Provide
from litestar.logging import LoggingConfig
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import RedocRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Tag
from litestar.stores.redis import RedisStore
from redis.asyncio import ConnectionPool

from service.accounts import AuthController
from service.appointments import AppointmentController
from service.booking_requests import BookingRequestController
from service.db import Connection, Database
from service.doctors import DoctorController
from service.errors import EXCEPTION_HANDLERS
from service.health import HealthController
from service.notify import Notifications
from service.ratelimit import per_address_limit
from service.security import CurrentUser, Passwords, UserCache, jwt_auth
from service.settings import Settings

API_DESCRIPTION = """\
Book doctor appointments without ever double-booking a slot.

Patients ask for a slot with `POST /appointments`; the request is stored at once and answered `202` with a
status URL, then a worker decides it under a per-doctor lock. Poll `GET /booking-requests/{id}` (long polling
with `?wait=N`), or send `Prefer: wait=N` to get the decision in the same call.

Authenticate with `POST /auth/login` and send the token as `Authorization: Bearer <token>`.
Errors are RFC 9457 `application/problem+json`. Times are RFC 3339; a time without an offset is UTC.
"""

TAGS = [
    Tag(name="accounts", description="Register, log in, reset a forgotten password"),
    Tag(name="doctors", description="The directory, availability windows and bookable slots"),
    Tag(name="appointments", description="Book, read and cancel appointments"),
    Tag(name="booking requests", description="Follow a booking until it is decided"),
    Tag(name="health", description="Liveness of the service and what it depends on"),
]


def redis_client(settings: Settings) -> ArqRedis:
    """A lazily connecting client: the API starts (and /health answers 503) while Redis is away."""
    pool = ConnectionPool.from_url(
        settings.redis_url, socket_connect_timeout=1, socket_timeout=5, health_check_interval=30,
        retry_on_timeout=False,
    )
    return ArqRedis(connection_pool=pool)


async def provide_transaction(db: Database) -> AsyncIterator[Connection]:
    """The request's transaction: committed after the handler returns, before the response is sent;
    rolled back if the handler raises."""
    async with db.transaction() as tx:
        yield tx


def provide_user(request: Request[CurrentUser, Any, Any]) -> CurrentUser:
    return request.user


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    # An access log line per request costs real time on the booking path; ACCESS_LOG=false drops it.
    logging.getLogger("uvicorn.access").disabled = not settings.access_log
    redis = redis_client(settings)
    passwords = Passwords(settings.bcrypt_rounds)
    user_cache = UserCache(settings.auth_cache_seconds)
    listener = Notifications(redis, on_user_changed=user_cache.forget)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.db = await Database.connect(settings, min_size=0)
        app.state.user_cache = user_cache
        listener.start()
        try:
            yield
        finally:
            await listener.stop()
            await app.state.db.close()
            await redis.aclose()

    def provide_db(state: State) -> Database:
        return state.db

    return Litestar(
        route_handlers=[AuthController, DoctorController, AppointmentController, BookingRequestController,
                        HealthController],
        dependencies={
            "settings": Provide(lambda: settings, use_cache=True, sync_to_thread=False),
            "db": Provide(provide_db, sync_to_thread=False),
            "tx": Provide(provide_transaction),
            "redis": Provide(lambda: redis, use_cache=True, sync_to_thread=False),
            "passwords": Provide(lambda: passwords, use_cache=True, sync_to_thread=False),
            "listener": Provide(lambda: listener, use_cache=True, sync_to_thread=False),
            "user_cache": Provide(lambda: user_cache, use_cache=True, sync_to_thread=False),
            "user": Provide(provide_user, sync_to_thread=False),
        },
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        on_app_init=[jwt_auth(settings).on_app_init],
        middleware=[per_address_limit(settings).middleware],
        stores={"rate_limit": RedisStore(redis, namespace="rate-limit", handle_client_shutdown=False)},
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Doctor Appointments API",
            version="1.0.0",
            description=API_DESCRIPTION,
            tags=TAGS,
            path="/schema",
            render_plugins=[SwaggerRenderPlugin(path="/swagger"), RedocRenderPlugin(path="/redoc")],
        ),
        logging_config=LoggingConfig(
            root={"level": "INFO", "handlers": ["queue_listener"]},
            log_exceptions="never",  # the 500 handler logs what is unexpected, once
        ),
        debug=False,
    )


@cache
def __getattr__(name: str) -> Litestar:
    """`uvicorn service.app:app` builds the app on first use, so importing this module reads no settings."""
    if name == "app":
        return create_app()
    raise AttributeError(name)
