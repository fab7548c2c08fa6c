"""The application, assembled in one place: routes, dependencies, errors, OpenAPI and the lifespan."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache

from litestar import Litestar, Request, Router
from litestar.config.cors import CORSConfig
from litestar.config.response_cache import ResponseCacheConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Tag
from litestar.stores.memory import MemoryStore
from redis.asyncio import BlockingConnectionPool, Redis

from service.api.controllers.accounts import AuthController
from service.api.controllers.appointment_types import AppointmentTypeController
from service.api.controllers.appointments import AppointmentController
from service.api.controllers.booking_requests import BookingRequestController
from service.api.controllers.calendar_feeds import CalendarFeedController
from service.api.controllers.doctors import DoctorController
from service.api.controllers.health import HealthController
from service.api.controllers.holds import HoldController
from service.api.controllers.metrics import MetricsController, metrics_token_guard
from service.api.controllers.patients import PatientController
from service.api.controllers.time_off import TimeOffController
from service.api.controllers.waitlist import WaitlistController
from service.api.controllers.webhooks import WebhookController
from service.api.controllers.weekly_hours import WeeklyHoursController
from service.api.dependencies import DatabaseDep
from service.api.extensions import (
    DocumentedStructSchemaPlugin,
    EnumMemberNamesPlugin,
    JsonRequest,
    RedocPage,
    SwaggerPage,
    around_every_request,
    before_request,
    resolve_dependencies_in_turn,
    strict_path_integers,
)
from service.api.headers import add_security_headers
from service.api.logs import RequestIds, log_uvicorn_through_ours, logging_config
from service.api.metrics import count_http_requests, process_ending
from service.api.notifications import Notifications
from service.api.problems import EXCEPTION_HANDLERS, problem_details_plugin
from service.api.ratelimit import AddressRateLimit
from service.api.schedule_cache import ScheduleVersions, drop_expired_responses
from service.api.security import UserCache, jwt_auth
from service.core.accounts import CurrentUser, Passwords
from service.core.db import Connection, Database
from service.core.directory import DirectoryCache
from service.core.schedule import BookableTypes
from service.core.settings import Settings

API_DESCRIPTION = """\
Book doctor appointments without ever double-booking a slot.

Patients ask for a slot with `POST /appointments`; the request is stored at once and answered `202` with a
status URL, then a worker decides it under a per-doctor lock. Poll `GET /booking-requests/{id}` (long polling
with `?wait=N`), or send `Prefer: wait=N` to get the decision in the same call.

A slot can also be held for a few minutes (`POST /holds`, decided the same way) and then confirmed, and patients can
wait for time with a doctor (`POST /waitlist`): freed time is offered to them first come, first served.

Authenticate with `POST /auth/login` and send the token as `Authorization: Bearer <token>`.
Errors are RFC 9457 `application/problem+json`. Times are RFC 3339; a time without an offset is UTC.
"""

TAGS = [
    Tag(name="accounts", description="Register, log in, reset a forgotten password"),
    Tag(name="doctors", description="The directory, availability windows and bookable slots"),
    Tag(name="schedules", description="Weekly hours in the doctor's time zone, time off, appointment types"),
    Tag(name="appointments", description="Book, read and cancel appointments"),
    Tag(name="booking requests", description="Follow a booking until it is decided"),
    Tag(name="front desk", description="What staff look up to book on a patient's behalf"),
    Tag(name="notifications", description="Webhooks and calendar feeds of your appointments"),
    Tag(name="holds", description="Keep a slot for a few minutes, then confirm it or let it go"),
    Tag(name="waitlist", description="Wait for time with a doctor; freed time is offered first come, first served"),
    Tag(name="health", description="Liveness of the service and what it depends on"),
]


def redis_client(settings: Settings) -> Redis:
    """A lazily connecting client: the API starts (and /health answers 503) while Redis is away.

    At most REDIS_POOL_SIZE connections, which a crowd of requests waits for in turn: redis-py's unbounded pool
    opens a connection per concurrent command, one at a time under its lock, so a burst of bookings (the rush in
    tests/bench) spent seconds connecting before it queued a job."""
    pool = BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=settings.redis_pool_size, timeout=5, socket_connect_timeout=1,
        socket_timeout=5, health_check_interval=30, retry_on_timeout=False,
    )
    return Redis(connection_pool=pool)


async def provide_transaction(db: DatabaseDep) -> AsyncIterator[Connection]:
    """The request's transaction: committed after the handler returns, before the response is sent;
    rolled back if the handler raises."""
    async with db.transaction() as tx:
        yield tx


def provide_user(request: Request[CurrentUser, object, State]) -> CurrentUser:
    return request.user


def cors_config(settings: Settings) -> CORSConfig | None:
    """Browsers' pages from CORS_ALLOW_ORIGINS may call the API (tokens travel in a header, never a cookie, so no
    credentials); with none configured there are no CORS headers at all."""
    if not settings.cors_origins:
        return None
    # What a page's script may read of a response: the status URL of a 202, how long to wait after a 429 or 503.
    return CORSConfig(allow_origins=settings.cors_origins,
                      expose_headers=["Location", "Preference-Applied", "Retry-After"])


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    resolve_dependencies_in_turn()
    strict_path_integers()
    redis = redis_client(settings)
    passwords = Passwords(settings.bcrypt_rounds, settings.password_hash_concurrency)
    user_cache = UserCache(settings.auth_cache_seconds)
    schedule_versions = ScheduleVersions(known_taken_seconds=settings.known_taken_seconds)
    # Retired with the versions; its rankings learn from their log which doctors changed.
    directory_cache = DirectoryCache(schedule_versions.of, schedule_versions.listing, schedule_versions)
    bookable_types = BookableTypes(schedule_versions.listing)
    listener = Notifications(redis, users=user_cache, schedule=schedule_versions)
    cached_responses = MemoryStore()
    auth = jwt_auth(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.db = await Database.connect(settings, min_size=0)
        app.state.redis = redis  # for middleware, which cannot hold it (api/ratelimit.py)
        app.state.user_cache = user_cache
        listener.start()
        # What startup built (routes, the OpenAPI schema, modules) lives as long as the process: out of the
        # collector's sight, a full collection has far less to walk (see the README's benchmark notes).
        gc.freeze()
        pruning = asyncio.create_task(drop_expired_responses(cached_responses))
        try:
            yield
        finally:
            pruning.cancel()
            await listener.stop()
            await app.state.db.close()
            await redis.aclose()
            process_ending()

    def provide_db(state: State) -> Database:
        return state.db

    def value(thing: object) -> Provide:
        return Provide(lambda: thing, use_cache=True, sync_to_thread=False)

    # Off in production unless METRICS_TOKEN is set; behind it whenever it is.
    metrics = settings.metrics_enabled
    metrics_route = [Router("/", route_handlers=[MetricsController],
                            guards=[metrics_token_guard(settings.metrics_token)])] if metrics else []
    app = Litestar(
        route_handlers=[
            # The address limit guards only the account endpoints (guessing, hashing); no other request pays for it.
            Router("/", route_handlers=[AuthController], middleware=[AddressRateLimit(settings)]),
            DoctorController, WeeklyHoursController, TimeOffController, AppointmentTypeController,
            AppointmentController, BookingRequestController, PatientController, HoldController, WaitlistController,
            WebhookController, CalendarFeedController, HealthController, *metrics_route,
        ],
        dependencies={
            "settings": value(settings),
            "db": Provide(provide_db, sync_to_thread=False),
            "tx": Provide(provide_transaction),
            "redis": value(redis),
            "passwords": value(passwords),
            "listener": value(listener),
            "user_cache": value(user_cache),
            "schedule_versions": value(schedule_versions),
            "directory_cache": value(directory_cache),
            "bookable_types": value(bookable_types),
            "user": Provide(provide_user, sync_to_thread=False),
        },
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        on_app_init=[auth.on_app_init, *([count_http_requests] if metrics else [])],
        # Every operation declares bearer itself (generators such as openapi-python-client read only an operation's
        # own `security`); those of security.PUBLIC declare none.
        security=[auth.security_requirement],
        stores={"response_cache": cached_responses},
        response_cache_config=ResponseCacheConfig(key_builder=schedule_versions.cache_key),  # schedule reads only
        request_max_body_size=settings.max_body_bytes,
        request_class=JsonRequest,
        before_request=before_request,
        before_send=[add_security_headers],
        cors_config=cors_config(settings),
        plugins=[DocumentedStructSchemaPlugin(), EnumMemberNamesPlugin(), problem_details_plugin()],
        openapi_config=OpenAPIConfig(
            title="Doctor Appointments API",
            version="1.0.0",
            description=API_DESCRIPTION,
            tags=TAGS,
            path="/schema",
            render_plugins=[SwaggerPage(path="/swagger"), RedocPage(path="/redoc")],
        ),
        logging_config=logging_config(settings),
        debug=False,
    )
    log_uvicorn_through_ours(settings.access_log)
    around_every_request(app, RequestIds)  # every request has an id, a route matched or not
    return app


@cache
def __getattr__(name: str) -> Litestar:
    """`uvicorn service.api.app:app` builds the app on first use, so importing this module reads no settings."""
    if name == "app":
        return create_app()
    raise AttributeError(name)
