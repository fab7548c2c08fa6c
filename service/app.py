"""The application, assembled in one place: routes, dependencies, errors, OpenAPI and the lifespan."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from typing import Any

import msgspec
from arq.connections import ArqRedis
from litestar import HttpMethod, Litestar, Request, Response, Router
from litestar._openapi.schema_generation import SchemaCreator
from litestar._openapi.schema_generation.plugins import StructSchemaPlugin
from litestar.config.response_cache import ResponseCacheConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.logging import LoggingConfig
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import RedocRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Schema, Tag
from litestar.status_codes import HTTP_204_NO_CONTENT
from litestar.stores.memory import MemoryStore
from litestar.stores.redis import RedisStore
from litestar.typing import FieldDefinition
from redis.asyncio import ConnectionPool

from service.accounts import AuthController
from service.appointments import AppointmentController
from service.booking_requests import BookingRequestController
from service.db import Connection, Database
from service.dependencies import DatabaseDep, resolve_dependencies_in_turn
from service.doctors import DoctorController
from service.errors import EXCEPTION_HANDLERS, InvalidInput, UnsupportedMediaType
from service.health import HealthController
from service.notify import Notifications
from service.ratelimit import per_address_limit
from service.schedule import ScheduleVersions, drop_expired_responses
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


async def provide_transaction(db: DatabaseDep) -> AsyncIterator[Connection]:
    """The request's transaction: committed after the handler returns, before the response is sent;
    rolled back if the handler raises."""
    async with db.transaction() as tx:
        yield tx


@cache
def body_decoder(handler: HTTPRouteHandler) -> msgspec.json.Decoder:
    return msgspec.json.Decoder(handler.parsed_data_field.annotation)  # type: ignore[union-attr]


def first_repeated(names: list[str]) -> str | None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


def refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> None:
    if (name := first_repeated([name for name, _ in pairs])) is not None:
        raise InvalidInput(f"`{name}` appears twice in one object", field=name)


class JsonRequest(Request[CurrentUser, Any, State]):
    """Litestar's request, strict about bodies.

    - JSON only: any other Content-Type is a 415.
    - Decoded straight into the handler's `data` type by msgspec in strict mode: Litestar's own lax conversion
      takes `"5"` for an id and 1900000000 for a time.
    - A key twice in one object is a 400: parsers differ on which one counts (msgspec takes the last).
    - JSON nested too deeply, or not in UTF-8, is a 400, not a 500.
    """

    async def json(self) -> Any:
        media_type, _ = self.content_type
        if media_type != "application/json" and not media_type.endswith("+json"):
            raise UnsupportedMediaType(f"send the body as application/json, not {media_type or 'untyped'}")
        if self.route_handler.parsed_data_field is None:
            return await super().json()
        body = await self.body()
        try:
            data = body_decoder(self.route_handler).decode(body)
            json.loads(body, object_pairs_hook=refuse_duplicate_keys)  # msgspec took it: valid, small JSON
        except msgspec.ValidationError as exc:
            raise ValidationException(f"Validation failed for {self.method} {self.url.path}",
                                      extra=[{"key": "data", "message": str(exc), "source": "body"}]) from None
        except msgspec.DecodeError as exc:
            raise InvalidInput(str(exc), field="body") from None
        except UnicodeDecodeError:
            raise InvalidInput("the body is not UTF-8", field="body") from None
        except RecursionError:  # a decoder gives up past its depth limit
            raise InvalidInput("the JSON is nested too deeply", field="body") from None
        return data


async def before_request(request: Request[Any, Any, Any]) -> Response[None] | None:
    """Two fixes to Litestar's reading of a request, before any handler runs.

    - OPTIONS names every method of the path: Litestar's own answer names only those of the first handler a
      controller registered there (DELETE but not GET for /appointments/{id}).
    - A query parameter given twice is a 400: every one of ours takes one value, and Litestar would silently keep
      one of the two.
    """
    if request.method == HttpMethod.OPTIONS:
        template = request.scope["path_template"]
        methods = next(route.methods for route in request.app.routes if route.path_format == template)
        return Response(None, status_code=HTTP_204_NO_CONTENT, headers={"Allow": ", ".join(sorted(methods))})
    if (repeated := first_repeated([name for name, _ in request.query_params.multi_items()])) is not None:
        raise InvalidInput("given more than once", field=repeated)
    return None


class ClosedStructSchemaPlugin(StructSchemaPlugin):
    """A msgspec Struct's schema, with `additionalProperties: false` when it forbids unknown fields (Litestar's
    own leaves that out, so the document would allow what the API refuses)."""

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        return (super().is_plugin_supported_field(field_definition)
                and field_definition.type_.__struct_config__.forbid_unknown_fields)

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        schema.additional_properties = False
        return schema


def provide_user(request: Request[CurrentUser, Any, Any]) -> CurrentUser:
    return request.user


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    resolve_dependencies_in_turn()
    # An access log line per request costs real time on the booking path; ACCESS_LOG=false drops it.
    logging.getLogger("uvicorn.access").disabled = not settings.access_log
    redis = redis_client(settings)
    passwords = Passwords(settings.bcrypt_rounds)
    user_cache = UserCache(settings.auth_cache_seconds)
    schedule = ScheduleVersions()
    listener = Notifications(redis, users=user_cache, schedule=schedule)
    cached_responses = MemoryStore()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.db = await Database.connect(settings, min_size=0)
        app.state.user_cache = user_cache
        listener.start()
        # What startup built (routes, the OpenAPI schema, modules) lives as long as the process: out of the
        # collector's sight, a full collection has far less to walk (measured under load: 45 ms pauses, then 22).
        gc.freeze()
        pruning = asyncio.create_task(drop_expired_responses(cached_responses))
        try:
            yield
        finally:
            pruning.cancel()
            await listener.stop()
            await app.state.db.close()
            await redis.aclose()

    def provide_db(state: State) -> Database:
        return state.db

    return Litestar(
        route_handlers=[
            # The address limiter guards only the endpoints that guess passwords; no other request pays for it.
            Router("/", route_handlers=[AuthController], middleware=[per_address_limit(settings).middleware]),
            DoctorController, AppointmentController, BookingRequestController, HealthController,
        ],
        dependencies={
            "settings": Provide(lambda: settings, use_cache=True, sync_to_thread=False),
            "db": Provide(provide_db, sync_to_thread=False),
            "tx": Provide(provide_transaction),
            "redis": Provide(lambda: redis, use_cache=True, sync_to_thread=False),
            "passwords": Provide(lambda: passwords, use_cache=True, sync_to_thread=False),
            "listener": Provide(lambda: listener, use_cache=True, sync_to_thread=False),
            "user_cache": Provide(lambda: user_cache, use_cache=True, sync_to_thread=False),
            "schedule": Provide(lambda: schedule, use_cache=True, sync_to_thread=False),
            "user": Provide(provide_user, sync_to_thread=False),
        },
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        on_app_init=[jwt_auth(settings).on_app_init],
        stores={"rate_limit": RedisStore(redis, namespace="rate-limit", handle_client_shutdown=False),
                "response_cache": cached_responses},
        response_cache_config=ResponseCacheConfig(key_builder=schedule.cache_key),  # schedule reads only
        request_max_body_size=settings.max_body_bytes,
        request_class=JsonRequest,
        before_request=before_request,
        plugins=[ClosedStructSchemaPlugin()],
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
