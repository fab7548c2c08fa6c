"""What plain Litestar still gets wrong, one test per override of ours.

Each test builds a tiny app WITHOUT our override and asserts the misbehaviour the override exists to fix. A test
that fails means Litestar changed: its docstring names the override that may go. None needs MySQL or Redis.
"""

from __future__ import annotations

import asyncio
import enum
import importlib.util
import re
from collections.abc import Callable
from datetime import datetime
from importlib.metadata import version
from typing import Annotated, Any, Literal

import httpx
import msgspec
import pytest
from litestar import Controller, Litestar, Request, delete, get, post
from litestar._kwargs.kwargs_model import KwargsModel
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency, Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import RedocRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Schema
from litestar.params import Body, FromPath, FromQuery, QueryParameter
from litestar.routes.base import parsers_map as path_parsers
from litestar.security.jwt import JWTAuth, Token
from litestar.testing import AsyncTestClient, create_test_client

JWT_SECRET = "a-test-secret-long-enough-for-hs256-0123456789"


class Booking(msgspec.Struct, forbid_unknown_fields=True):
    id: int
    at: datetime | None = None


@post("/bookings")
async def create_booking(data: Annotated[Booking, Body()]) -> dict[str, Any]:
    return {"id": data.id, "at": None if data.at is None else data.at.isoformat()}


def post_booking(content: str, content_type: str = "application/json") -> httpx.Response:
    """POST `content` as it is, to a plain handler that takes a `Booking` and echoes what it decoded."""
    with create_test_client([create_booking]) as http:
        return http.post("/bookings", content=content, headers={"Content-Type": content_type})


def test_versions_the_overrides_were_written_against() -> None:
    """The overrides in service/api/extensions.py were written against Litestar 2.25 and arq 0.28.0, and these
    tests checked on them: move the pins in pyproject.toml together with re-running (and re-checking) this file."""
    assert version("litestar").startswith("2.25.")
    assert version("arq") == "0.28.0"


# 1. JsonRequest: strict JSON bodies.


def test_a_string_is_taken_for_an_int_field() -> None:
    """If this fails, Litestar fixed it: remove JsonRequest's strict decoding from service/api/extensions.py."""
    response = post_booking('{"id": "5"}')
    assert response.status_code == 201
    assert response.json()["id"] == 5


def test_an_integer_is_taken_for_a_datetime_field() -> None:
    """If this fails, Litestar fixed it: remove JsonRequest's strict decoding from service/api/extensions.py."""
    response = post_booking('{"id": 1, "at": 1900000000}')
    assert response.status_code == 201
    assert response.json()["at"] == "2030-03-17T17:46:40+00:00"


def test_a_key_twice_in_one_object_is_taken_silently_the_last_one_winning() -> None:
    """If this fails, Litestar fixed it: remove JsonRequest's duplicate key check from service/api/extensions.py."""
    response = post_booking('{"id": 1, "id": 2}')
    assert response.status_code == 201
    assert response.json()["id"] == 2


def test_json_sent_as_text_plain_is_accepted() -> None:
    """If this fails, Litestar fixed it: remove JsonRequest's Content-Type check from service/api/extensions.py."""
    response = post_booking('{"id": 7}', content_type="text/plain")
    assert response.status_code == 201
    assert response.json()["id"] == 7


# 2 and 3. before_request: OPTIONS and repeated query parameters.


class Things(Controller):
    """DELETE comes first both in the source and by name: Litestar builds a controller's routes in name order."""

    path = "/things"

    @delete("/{thing_id:int}")
    async def cancel_thing(self, thing_id: FromPath[int]) -> None:
        return None

    @get("/{thing_id:int}")
    async def show_thing(self, thing_id: FromPath[int]) -> dict[str, int]:
        return {"id": thing_id}


def test_options_names_only_the_methods_of_the_first_handler_of_a_path() -> None:
    """If this fails, Litestar fixed it: remove before_request's OPTIONS answer from service/api/extensions.py.

    The automatic OPTIONS handler is made for the route of the path's first handler and keeps reading that
    route's methods after the later handlers replaced it with a route of them all."""
    with create_test_client([Things]) as http:
        assert http.get("/things/1").status_code == 200
        assert http.delete("/things/1").status_code == 204
        response = http.options("/things/1")
    assert response.status_code == 204
    allowed = {method.strip() for method in response.headers["Allow"].split(",")}
    assert allowed == {"DELETE", "OPTIONS"}  # GET is missing


@get("/search")
async def search(q: FromQuery[int]) -> dict[str, int]:
    return {"q": q}


def test_a_query_parameter_given_twice_is_answered_with_one_of_the_two() -> None:
    """If this fails, Litestar fixed it: remove before_request's repeated query parameter check from
    service/api/extensions.py."""
    with create_test_client([search]) as http:
        response = http.get("/search", params=[("q", "1"), ("q", "2")])
    assert response.status_code == 200
    assert response.json()["q"] in (1, 2)  # 2 on Litestar 2.25: the last one


def test_a_query_parameter_the_handler_does_not_take_is_ignored() -> None:
    """If this fails, Litestar fixed it: remove before_request's unknown query parameter check from
    service/api/extensions.py."""
    with create_test_client([search]) as http:
        response = http.get("/search", params={"q": "1", "qq": "2"})
    assert response.status_code == 200


def test_null_for_a_choice_in_a_query_is_read_as_no_value() -> None:
    """If this fails, Litestar fixed it: remove the choices from query_rule in service/api/extensions.py."""

    @get("/filtered", sync_to_thread=False)
    def filtered(status: FromQuery[Literal["open", "closed"] | None] = None) -> dict[str, Any]:
        return {"status": status}

    with create_test_client([filtered]) as http:
        response = http.get("/filtered", params={"status": "null"})
    assert response.status_code == 200
    assert response.json() == {"status": None}


@pytest.mark.parametrize(("sent", "read"), [("1e1", 10), ("10.0", 10), ("100e-1", 10), ("-0", 0)])
def test_an_integer_query_parameter_is_read_from_a_float_spelling(sent: str, read: int) -> None:
    """If this fails, Litestar fixed it: remove before_request's integer check from service/api/extensions.py."""
    with create_test_client([search]) as http:
        response = http.get("/search", params={"q": sent})
    assert response.status_code == 200
    assert response.json()["q"] == read


# 2b. strict_path_integers: integers in paths.


def litestars_own(module_name: str) -> Any:
    """A fresh, private copy of one of Litestar's modules, executed from its installed file: it holds what Litestar
    ships whatever ours replaced in this process (create_app, and tests that build the app, assign to Litestar's
    own objects, and nothing puts the originals back). It is not registered in sys.modules, so nothing else sees
    it."""
    spec = importlib.util.find_spec(module_name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("sent", "read"), [("1_0", 10), ("%201", 1), ("+1", 1), ("01", 1), ("%EF%BC%91", 1)])
def test_an_integer_in_a_path_is_read_by_int(monkeypatch: pytest.MonkeyPatch, sent: str, read: int) -> None:
    """If this fails, Litestar fixed it: remove strict_path_integers from service/api/extensions.py."""
    monkeypatch.setitem(path_parsers, int, litestars_own("litestar.routes.base").parsers_map[int])
    with create_test_client([Things]) as http:
        response = http.get(f"/things/{sent}")
    assert response.status_code == 200
    assert response.json() == {"id": read}


# 4. DocumentedStructSchemaPlugin: additionalProperties in the OpenAPI document.


def schema_of(name: str, app: Litestar) -> dict[str, Any]:
    return app.openapi_schema.to_schema()["components"]["schemas"][name]


def test_a_struct_that_forbids_unknown_fields_is_documented_as_open() -> None:
    """If this fails, Litestar fixed it: remove DocumentedStructSchemaPlugin from service/api/extensions.py."""
    assert Booking.__struct_config__.forbid_unknown_fields
    schema = schema_of("Booking", Litestar([create_booking]))
    assert schema["type"] == "object"
    assert "additionalProperties" not in schema


# 4b. The OpenAPI document for generated clients: Verbatim, PublicOperation, EnumMemberNamesPlugin, params.py.


def test_a_null_member_of_an_example_is_left_out_of_the_document() -> None:
    """If this fails, Litestar fixed it: write struct examples as they are, without extensions.Verbatim."""
    assert Schema(examples=[{"id": 1, "at": None}]).to_schema() == {"examples": [{"id": 1}]}


def test_an_operation_cannot_say_it_needs_no_security() -> None:
    """If this fails, Litestar fixed it: give public handlers `security=[]` instead of extensions.PublicOperation."""

    @get("/open", security=[], sync_to_thread=False)
    def open_to_anyone() -> None:
        return None

    config = OpenAPIConfig(title="Open", version="1", security=[{"BearerToken": []}])
    operation = Litestar([open_to_anyone], openapi_config=config).openapi_schema.to_schema()["paths"]["/open"]["get"]
    assert "security" not in operation  # so the document's bearer requirement holds for it


class Zone(enum.StrEnum):
    ETC_GMT_PLUS_5 = "Etc/GMT+5"
    ETC_GMT_MINUS_5 = "Etc/GMT-5"


class Move(msgspec.Struct):
    zone: Zone


@post("/moves")
async def move(data: Annotated[Move, Body()]) -> None:
    return None


def test_an_enum_schema_does_not_name_its_members() -> None:
    """If this fails, Litestar names them: remove EnumMemberNamesPlugin from service/api/extensions.py."""
    schema = schema_of("Zone", Litestar([move]))
    assert schema["enum"] == ["Etc/GMT+5", "Etc/GMT-5"]  # one name to a generator: ETC_GMT5
    assert not any(key.startswith("x-") for key in schema)


def test_an_optional_query_time_is_documented_as_a_string_or_null_beside_its_format() -> None:
    """If this fails, Litestar documents it as a date-time string: drop `type` and `one_of` from params.QUERY_TIME
    (and from params.choice_filter)."""

    @get("/since", sync_to_thread=False)
    def since(after: Annotated[str | None, QueryParameter(schema_extra={"format": "date-time"})] = None) -> None:
        return None

    operation = Litestar([since]).openapi_schema.to_schema()["paths"]["/since"]["get"]
    assert operation["parameters"][0]["schema"] == {"oneOf": [{"type": "string"}, {"type": "null"}],
                                                    "format": "date-time"}


# 5. BearerAuthenticationMiddleware: the Authorization scheme.


async def token_user(token: Token, connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    return token.sub


@get("/me")
async def me(request: Request[str, Token, Any]) -> dict[str, str]:
    return {"user": request.user}


@pytest.mark.parametrize("scheme", ["Basic", "Token", "Whatever"])
def test_a_token_is_read_whatever_the_scheme_of_the_authorization_header(scheme: str) -> None:
    """If this fails, Litestar fixed it: remove BearerAuthenticationMiddleware from service/api/extensions.py."""
    auth = JWTAuth[str](token_secret=JWT_SECRET, retrieve_user_handler=token_user)
    token = auth.create_token(identifier="42")
    with create_test_client([me], on_app_init=[auth.on_app_init]) as http:
        assert http.get("/me").status_code == 401  # the middleware is there
        response = http.get("/me", headers={"Authorization": f"{scheme} {token}"})
    assert response.status_code == 200
    assert response.json() == {"user": "42"}


# 6. resolve_dependencies_in_turn: a task per dependency.


def litestars_own_resolve_dependencies() -> Callable[..., Any]:
    """KwargsModel.resolve_dependencies as Litestar ships it, whether or not ours replaced it in this process.

    Ours is applied by assigning to the class, so taking the method off the class, even at import time, could hand
    back ours, depending on which modules ran first.
    """
    return litestars_own("litestar._kwargs.kwargs_model").KwargsModel.resolve_dependencies


async def test_dependencies_of_one_level_are_resolved_each_in_a_task_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If this fails, Litestar fixed it: remove resolve_dependencies_in_turn from service/api/extensions.py.

    The counterpart of test_dependencies_of_one_level_are_resolved_in_the_handlers_own_task (test_foundation.py),
    run on Litestar's own method; monkeypatch puts back whatever was in place before."""
    monkeypatch.setattr(KwargsModel, "resolve_dependencies", litestars_own_resolve_dependencies())
    seen: dict[str, asyncio.Task[Any] | None] = {}

    def first() -> int:
        seen["first"] = asyncio.current_task()
        return 1

    async def second() -> int:
        seen["second"] = asyncio.current_task()
        return 2

    @get("/both")
    async def both(one: NamedDependency[int], two: NamedDependency[int]) -> dict[str, int]:
        seen["handler"] = asyncio.current_task()
        return {"sum": one + two}

    app = Litestar([both], dependencies={"one": Provide(first, sync_to_thread=False), "two": Provide(second)})
    async with AsyncTestClient(app) as http:
        response = await http.get("/both")
    assert response.json() == {"sum": 3}
    tasks = [seen["first"], seen["second"], seen["handler"]]
    assert None not in tasks
    assert len({id(task) for task in tasks}) == 3  # three tasks: one per dependency, besides the handler's


# 8. SwaggerPage, RedocPage: a nonce for the docs pages' inline script; their viewer's files served from here.


@pytest.mark.parametrize("plugin", [SwaggerRenderPlugin, RedocRenderPlugin])
def test_the_docs_pages_start_their_viewer_with_an_inline_script_that_has_no_nonce(plugin: type[Any]) -> None:
    """If this fails, Litestar changed how its docs pages start (a nonce of its own, or no inline script): remove
    SwaggerPage and RedocPage from service/api/extensions.py, and let the docs pages' policy in headers.py follow."""
    config = OpenAPIConfig(title="Docs", version="1", render_plugins=[plugin(path="/page")])
    with create_test_client([], openapi_config=config) as http:
        response = http.get("/schema/page")
    assert response.status_code == 200
    inline_scripts = re.findall(r"<script(?![^>]*\ssrc=)[^>]*>", response.text)
    assert inline_scripts
    assert not any("nonce" in tag for tag in inline_scripts)


@pytest.mark.parametrize("plugin", [SwaggerRenderPlugin, RedocRenderPlugin])
def test_the_docs_pages_load_their_viewer_and_icon_from_cdns(plugin: type[Any]) -> None:
    """If this fails, Litestar serves its docs pages' files itself: SwaggerPage and RedocPage need not serve
    service/api/docs_assets/ any more."""
    config = OpenAPIConfig(title="Docs", version="1", render_plugins=[plugin(path="/page")])
    with create_test_client([], openapi_config=config) as http:
        page = http.get("/schema/page").text
    loaded = re.findall(r"<(?:script|link)[^>]*\s(?:src|href)=['\"]([^'\"]+)", page)
    assert loaded and all(url.startswith("https://") for url in loaded)


# 9. around_every_request: middleware for requests that match no route, too.


def test_app_level_middleware_does_not_run_for_a_request_that_matches_no_route() -> None:
    """If this fails, Litestar runs app-level middleware for every request: pass service/api/logs.py's RequestIds
    to Litestar(middleware=...) and remove around_every_request from service/api/extensions.py."""
    seen: list[str] = []

    def remember_path(app: Any) -> Any:
        async def middleware(scope: Any, receive: Any, send: Any) -> None:
            seen.append(scope["path"])
            await app(scope, receive, send)
        return middleware

    @get("/here", sync_to_thread=False)
    def here() -> str:
        return "here"

    with create_test_client([here], middleware=[remember_path]) as http:
        assert http.get("/here").status_code == 200
        assert http.get("/nowhere").status_code == 404
        assert http.post("/here").status_code == 405
    assert seen == ["/here"]
