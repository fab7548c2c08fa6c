"""Every override of Litestar, in one place, each with why it exists.

Litestar is pinned to the minor series these were written against (pyproject.toml). tests/test_framework_still_needs.py
shows, on a plain Litestar app, each behaviour an override corrects, so it fails the day Litestar fixes one and the
override can go; the service's own tests fail if one stops working underneath.

- `JsonRequest`: strict JSON bodies (415 for other types, no coercion, duplicate keys refused, bad JSON a 400).
- `before_request`: OPTIONS names every method of a path; a query parameter given twice, or one the endpoint does not
  take, or an integer not in plain decimal digits, or `null` for a choice, is a 400.
- `strict_path_integers`: an integer in a path is plain decimal digits (int() reads `1_0` as 10).
- `DocumentedStructSchemaPlugin`: `additionalProperties: false` for structs that forbid unknown fields; a struct's
  `example` as its schema's, written `Verbatim` (Litestar drops an example's null members).
- `PublicOperation`: an operation anyone may call says `security: []` (Litestar cannot write an empty list).
- `EnumMemberNamesPlugin`: an enum's schema names its members (`x-enum-varnames`), for generated clients.
- `BearerAuthenticationMiddleware`: only the Bearer scheme; a verified token's signature is not checked again.
- `resolve_dependencies_in_turn`: a handler's dependencies resolved one after another, not a task each.
- `SwaggerPage`, `RedocPage`: the docs pages' inline script carries a nonce, so the page's CSP can admit it alone; their
  viewer's files are served from here (docs_assets/), not from CDNs.
- `around_every_request`: middleware that runs for every request, a route matched or not.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import msgspec
from litestar import HttpMethod, Litestar, Request, Response
from litestar._kwargs.cleanup import DependencyCleanupGroup
from litestar._kwargs.dependencies import resolve_dependency
from litestar._kwargs.kwargs_model import KwargsModel
from litestar._openapi.schema_generation import SchemaCreator
from litestar._openapi.schema_generation.plugins import StructSchemaPlugin
from litestar.connection import ASGIConnection
from litestar.datastructures import CacheControlHeader, State
from litestar.exceptions import NotAuthorizedException, ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.middleware.authentication import AuthenticationResult
from litestar.openapi.plugins import OpenAPIRenderPlugin, RedocRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Operation, Schema
from litestar.openapi.spec.base import BaseSchemaObject
from litestar.plugins import OpenAPISchemaPlugin
from litestar.router import Router
from litestar.routes.base import parsers_map as path_parsers
from litestar.security.jwt import JWTAuthenticationMiddleware, Token
from litestar.static_files import create_static_files_router
from litestar.status_codes import HTTP_204_NO_CONTENT
from litestar.types import ASGIApp
from litestar.typing import FieldDefinition

from service.api.headers import CSP_STATE_KEY, REDOC_SOURCES, SWAGGER_UI_SOURCES, docs_page_policy
from service.core.accounts import CurrentUser
from service.core.errors import InvalidInput, UnsupportedMediaType

log = logging.getLogger("service")

# --- strict JSON request bodies ---------------------------------------------------------------------------------


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
    - Whatever else stops either parser (JSON nested too deeply, not UTF-8) is a 400 naming the body, never a 500.
    """

    async def json(self) -> Any:
        media_type, _ = self.content_type
        if media_type != "application/json" and not media_type.endswith("+json"):
            raise UnsupportedMediaType(f"send the body as application/json, not {media_type or 'untyped'}")
        if self.route_handler.parsed_data_field is None:
            return await super().json()
        body = await self.body()
        try:
            return decode_body(body_decoder(self.route_handler), body)
        except msgspec.ValidationError as exc:
            raise ValidationException(f"Validation failed for {self.method} {self.url.path}",
                                      extra=[{"key": "data", "message": str(exc), "source": "body"}]) from None


def decode_body(decoder: msgspec.json.Decoder, body: bytes) -> Any:
    """The body as `decoder`'s type, with no key twice in one object.

    Any failure to read it is the body's fault, a 400 naming it, never a 500; a msgspec.ValidationError (JSON that
    does not fit the type) passes through, for the caller to name the field.
    """
    try:
        data = decoder.decode(body)
        # msgspec took it, so it is valid JSON and small. Numbers are kept as text: the check needs none of their
        # values, and int() of more than 4,300 digits would raise.
        json.loads(body, object_pairs_hook=refuse_duplicate_keys, parse_int=str, parse_float=str, parse_constant=str)
    except (msgspec.ValidationError, InvalidInput):
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a parser raises about a body is a 400
        raise InvalidInput(unreadable(exc), field="body") from None
    return data


def unreadable(exc: Exception) -> str:
    """Why a body could not be read, in the client's terms."""
    if isinstance(exc, msgspec.DecodeError):
        return str(exc)
    if isinstance(exc, UnicodeDecodeError):
        return "the body is not UTF-8"
    if isinstance(exc, RecursionError):  # a decoder gives up past its depth limit
        return "the JSON is nested too deeply"
    log.warning("a body neither parser could read: %r", exc)  # not expected: seen, but no 500
    return "the body is not JSON this API can read"


# --- OPTIONS, query parameters and integers in paths ------------------------------------------------------------

# How an integer is written in a path or a query: Litestar reads a path's with int(), which takes `1_0` for 10 and
# ` 1`, `+1`, `01` or a full-width `１` for 1, and a query's with msgspec's lax conversion, which takes `1e1` and
# `10.0` for 10.
DECIMAL_INTEGER = re.compile(r"0|-?[1-9][0-9]*")


def decimal_integer(text: str) -> int:
    """`text` as an integer if it is one written plainly in ASCII digits; ValueError otherwise."""
    if not DECIMAL_INTEGER.fullmatch(text):
        raise ValueError(f"not a plain decimal integer: {text!r}")
    return int(text)  # more than 4,300 digits: ValueError too


def strict_path_integers() -> None:
    """`{id:int}` in a route's path matches plain decimal digits only; any other spelling matches no route (a 404,
    as `/doctors/abc`). Before the app is built: each route takes its parser when it is made."""
    path_parsers[int] = decimal_integer


# How a query value must be spelt, where Litestar's reading is not enough, and what to say when it is not.
QueryRule = tuple[re.Pattern[str], str]
INTEGER_RULE: QueryRule = (DECIMAL_INTEGER, "must be an integer written in decimal digits")


def query_rule(field: FieldDefinition | None) -> QueryRule | None:
    """The rule of a query parameter of this type: an integer (`int`, `int | None`) is plain decimal digits; a choice
    (`Literal[...]`, `Literal[...] | None`) is one of its values, as written (Litestar reads `null` as absent)."""
    if field is None:
        return None
    types = [field.annotation, *(field.args if field.is_optional else ())]
    if int in types:
        return INTEGER_RULE
    if choices := [str(value) for kind in types if get_origin(kind) is Literal for value in get_args(kind)]:
        return re.compile("|".join(map(re.escape, choices))), f"must be one of: {', '.join(choices)}"
    return None


@cache
def query_parameters(handler: HTTPRouteHandler, path_parameters: frozenset[str]) -> dict[str, QueryRule | None]:
    """The query parameters `handler` takes, by name, each with the rule of its values, if it has one."""
    model = handler.create_kwargs_model(dict.fromkeys(path_parameters))  # type: ignore[arg-type]
    signature = handler.parsed_fn_signature.parameters
    return {param.field_alias: query_rule(signature.get(param.field_name)) for param in model.expected_query_params}


async def before_request(request: Request[Any, Any, Any]) -> Response[None] | None:
    """Fixes to Litestar's reading of a request, before any handler runs.

    - OPTIONS names every method of the path: Litestar's own answer names only those of the first handler a
      controller registered there (DELETE but not GET for /appointments/{id}).
    - A query parameter given twice is a 400: every one of ours takes one value, and Litestar would silently keep
      one of the two.
    - A query parameter the endpoint does not take is a 400, as an unknown field in a body: Litestar ignores it,
      so `?wait=5` where there is no long poll, or a misspelt `ofset`, would be answered as if not sent.
    - An integer query parameter is plain decimal digits, else a 400 (see DECIMAL_INTEGER).
    - A query parameter with a set of values (a Literal) takes one of them: Litestar reads `?status=null` as no
      filter, which the document does not offer.
    """
    if request.method == HttpMethod.OPTIONS:
        template = request.scope["path_template"]
        methods = next(route.methods for route in request.app.routes if route.path_format == template)
        return Response(None, status_code=HTTP_204_NO_CONTENT, headers={"Allow": ", ".join(sorted(methods))})
    if not (query := list(request.query_params.multi_items())):
        return None
    if (repeated := first_repeated([name for name, _ in query])) is not None:
        raise InvalidInput("given more than once", field=repeated)
    taken = query_parameters(request.route_handler, frozenset(request.path_params))
    for name, value in query:
        if name not in taken:
            raise InvalidInput("not a parameter of this endpoint", field=name)
        if (rule := taken[name]) is not None and not rule[0].fullmatch(value):
            raise InvalidInput(rule[1], field=name)
    return None


# --- the OpenAPI schema of structs --------------------------------------------------------------------------------


class DocumentedStructSchemaPlugin(StructSchemaPlugin):
    """A msgspec Struct's schema, as the API reads and writes it:

    - `additionalProperties: false` when it forbids unknown fields (Litestar's own leaves that out, so the document
      would allow what the API refuses);
    - its `example` class variable, a whole realistic object, as the schema's `examples` (Litestar takes examples of
      fields only, so a body or an answer would be shown as a patchwork of unrelated values), written verbatim.
    """

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        struct = field_definition.type_
        if struct.__struct_config__.forbid_unknown_fields:
            schema.additional_properties = False
        if (example := getattr(struct, "example", None)) is not None:
            schema.examples = [Verbatim(example)]
        return schema


@dataclass
class Verbatim(BaseSchemaObject):
    """A value written into the document as it is. Litestar leaves out every null member of an object it writes, an
    example's too, and an example of `"cancelled_at": null` without it lacks a required field."""

    value: Any

    def to_schema(self) -> Any:  # type: ignore[override]
        return self.value


# --- the OpenAPI document for generated clients ----------------------------------------------------------------


@dataclass
class PublicOperation(Operation):
    """The operation of an endpoint anyone may call: `security: []`, which lifts the bearer requirement for it alone.

    Every other operation declares bearer itself. Litestar writes an operation's `security` as the handler's
    requirements `or None`, so the empty list, OpenAPI's only way to say "no authentication", never reaches the
    document; `[{}]` says "authentication optional", and a generated client (openapi-python-client) then demands a
    token for the call. A handler takes it as its `operation_class` (security.PUBLIC).
    """

    def __post_init__(self) -> None:
        self.security = []


@dataclass
class NamedEnumSchema(Schema):
    """A Schema with `x-enum-varnames`: the names of an enum's members, in the order of its values."""

    member_names: list[str] | None = field(default=None, metadata={"alias": "x-enum-varnames"})


class EnumMemberNamesPlugin(OpenAPISchemaPlugin):
    """An enum's component schema names its members in `x-enum-varnames`, as openapi-python-client and
    openapi-generator read it.

    A generator otherwise makes names from the values, and distinct values can make one name: `GMT+0`, `GMT-0` and
    `GMT0` are all `GMT0` to openapi-python-client, which gives up, and `Etc/GMT+5` and `Etc/GMT-5` (opposite offsets)
    would be one member. Litestar's Schema has no extension fields, so the registered schema becomes a NamedEnumSchema.
    """

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        return field_definition.is_enum

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        reference = schema_creator.for_enum_field(field_definition)  # registers the component, then refers to it
        schema = schema_creator.schema_registry.get_schema_for_field_definition(field_definition)
        schema.__class__ = NamedEnumSchema  # a subclass that only adds a field: the same object, one more key
        schema.member_names = [member.name for member in field_definition.annotation]  # type: ignore[attr-defined]
        return reference  # type: ignore[return-value]


# --- the docs pages: their inline script, and their viewers served from here ------------------------------------

INLINE_SCRIPT_TAG = re.compile(rb"<script(?![^>]*\ssrc=)")
DOCS_ASSETS = Path(__file__).parent / "docs_assets"  # the viewers' released files: docs_assets/README.md
NO_ICON = "<link rel='icon' href='data:,'>"  # Litestar's default icon is on a CDN; this one fetches nothing
A_YEAR = 365 * 24 * 3600


class NoncedDocsPage(OpenAPIRenderPlugin):
    """Litestar's Swagger UI and ReDoc pages start their viewer with an inline script (the OpenAPI document and the
    viewer's options), which a Content-Security-Policy blocks unless it names it; Litestar has no way to. Give that
    script a nonce made for this response, and leave the page's policy, with that nonce, for add_security_headers
    (headers.py): that script runs, no other inline one could.

    Litestar's pages load their viewer from CDNs, so offline (or with a CDN down) they are blank, and the policy has
    to trust those hosts. The viewer's files are served from here instead, next to the page, under the viewer's
    version: a new release is a new URL, so browsers may keep each file for a year."""

    csp_sources: dict[str, str]
    viewer: str  # its folder in docs_assets/, named as its npm package

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        nonce = secrets.token_urlsafe(18)
        request.state[CSP_STATE_KEY] = docs_page_policy(self.csp_sources, nonce)
        page = super().render(request, openapi_schema)
        return INLINE_SCRIPT_TAG.sub(b'<script nonce="' + nonce.encode() + b'"', page)

    def receive_router(self, router: Router) -> None:
        """Serve the viewer's files on the docs router (OpenAPIConfig.path), and point the page at them."""
        super().receive_router(router)
        folder = DOCS_ASSETS / self.viewer
        version = json.loads((folder / "package.json").read_bytes())["version"]
        assets_path = f"/assets/{self.viewer}-{version}"
        router.register(create_static_files_router(
            assets_path, directories=[folder], name=f"docs-assets-{self.viewer}",
            cache_control=CacheControlHeader(max_age=A_YEAR, public=True, immutable=True),
        ))
        self.use_assets(f"{router.path.rstrip('/')}{assets_path}")

    def use_assets(self, url: str) -> None:
        """Load the viewer's files from `url`."""
        raise NotImplementedError


class SwaggerPage(NoncedDocsPage, SwaggerRenderPlugin):
    csp_sources = SWAGGER_UI_SOURCES
    viewer = "swagger-ui-dist"

    def __init__(self, *, path: str) -> None:
        super().__init__(path=path, favicon=NO_ICON)

    def use_assets(self, url: str) -> None:
        self.js_url = f"{url}/swagger-ui-bundle.js"
        self.css_url = f"{url}/swagger-ui.css"
        self.standalone_preset_js_url = f"{url}/swagger-ui-standalone-preset.js"


class RedocPage(NoncedDocsPage, RedocRenderPlugin):
    csp_sources = REDOC_SOURCES
    viewer = "redoc"

    def __init__(self, *, path: str) -> None:
        super().__init__(path=path, favicon=NO_ICON, google_fonts=False)  # the fonts would come from Google

    def use_assets(self, url: str) -> None:
        self.js_url = f"{url}/redoc.standalone.js"


# --- bearer tokens ----------------------------------------------------------------------------------------------


class VerifiedTokens(dict[str, Token]):
    """Tokens whose signature and claims were checked, by their encoded form; bounded, oldest dropped first."""

    limit = 50_000

    def remember(self, encoded: str, token: Token) -> None:
        if len(self) >= self.limit:
            del self[next(iter(self))]
        self[encoded] = token


_verified_tokens = VerifiedTokens()


class BearerAuthenticationMiddleware(JWTAuthenticationMiddleware):
    """Litestar's JWT middleware, but only for `Authorization: Bearer <token>` (it would read any scheme)."""

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        scheme, _, token = connection.headers.get(self.auth_header, "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NotAuthorizedException("A bearer token is required")
        return await self.authenticate_token(encoded_token=token.strip(), connection=connection)

    async def authenticate_token(
        self, encoded_token: str, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        """Verify a token's signature once per process, not once per request: a cheap token check.

        The same string is the same signature, so a token verified before needs only its expiry checked again.
        Whether its user still exists and has not changed password is checked on every request, as before.
        """
        token = _verified_tokens.get(encoded_token)
        if token is None or token.exp <= datetime.now(UTC):
            result = await super().authenticate_token(encoded_token, connection)
            _verified_tokens.remember(encoded_token, result.auth)
            return result
        user = await self.retrieve_user_handler(token, connection)
        if not user:
            raise NotAuthorizedException()
        return AuthenticationResult(user=user, auth=token)


# --- dependency resolution --------------------------------------------------------------------------------------
# Litestar resolves the dependencies of a handler that share a level concurrently, a task each in an anyio task
# group (litestar-org/litestar#4563, open). Ours are values at hand or one pool checkout, so the tasks cost more
# than they could overlap (see the README's benchmark notes). This resolves each level's dependencies in turn, with
# Litestar's own per-dependency code.


async def resolve_in_turn(
    self: KwargsModel, connection: ASGIConnection[Any, Any, Any, Any], kwargs: dict[str, Any]
) -> DependencyCleanupGroup:
    cleanup_group = DependencyCleanupGroup()
    for batch in self.dependency_batches:
        for dependency in batch:
            await resolve_dependency(dependency, connection, kwargs, cleanup_group)
    return cleanup_group


def resolve_dependencies_in_turn() -> None:
    KwargsModel.resolve_dependencies = resolve_in_turn  # type: ignore[method-assign]


# --- middleware for every request ---------------------------------------------------------------------------------


def around_every_request(app: Litestar, middleware: Callable[[ASGIApp], ASGIApp]) -> None:
    """Run `middleware` around every HTTP request of `app`, outside its exception handling: Litestar runs
    app-level middleware only once a route matched, so a 404 or a 405 would pass it by. (Litestar wraps its own
    CORS middleware around the same handler, the same way.)"""
    app.asgi_handler = middleware(app.asgi_handler)
