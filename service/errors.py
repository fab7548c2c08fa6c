"""The application's exceptions and the one place that turns any error into RFC 9457 problem+json."""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.db import RETRYABLE_ERRORS, mysql_error_code

log = logging.getLogger("service")

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://docs.clinic.example/problems/"


class AppError(Exception):
    """Base of every error the API answers on purpose. Subclasses set the status and a short title."""

    status_code = 500
    title = "Internal server error"
    slug = "internal"

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = headers or {}
        self.extra = extra


class InvalidInput(AppError):
    status_code = 400
    title = "Invalid input"
    slug = "invalid-input"

    def __init__(self, detail: str, *, field: str | None = None, **extra: Any) -> None:
        if field is not None:
            extra.setdefault("errors", [{"field": field, "message": detail}])
        super().__init__(detail, **extra)


class NotAuthenticated(AppError):
    status_code = 401
    title = "Not authenticated"
    slug = "not-authenticated"

    def __init__(self, detail: str = "A valid bearer token is required") -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(AppError):
    status_code = 403
    title = "Forbidden"
    slug = "forbidden"


class NotFound(AppError):
    status_code = 404
    title = "Not found"
    slug = "not-found"


class Conflict(AppError):
    status_code = 409
    title = "Conflict"
    slug = "conflict"


class UnsupportedMediaType(AppError):
    status_code = 415
    title = "Unsupported media type"
    slug = "unsupported-media-type"


class TooManyRequests(AppError):
    status_code = 429
    title = "Too many requests"
    slug = "too-many-requests"

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Too many attempts; try again in {retry_after} seconds",
                         headers={"Retry-After": str(retry_after)})


class ServiceUnavailable(AppError):
    status_code = 503
    title = "Service unavailable"
    slug = "service-unavailable"


class FieldProblem(msgspec.Struct):
    field: str
    message: str


class Problem(msgspec.Struct):
    """RFC 9457 problem details. Some problems add members of their own (e.g. a 409's `conflicting_window`)."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldProblem] | msgspec.UnsetType = msgspec.UNSET


PROBLEM_DESCRIPTIONS = {
    400: "Invalid input; `errors` names each failing field",
    401: "No valid bearer token (or, for login, wrong credentials)",
    403: "The token's role may not do this",
    404: "Not found, or not yours",
    409: "Conflicts with the current state",
    413: "The request body is larger than the limit (MAX_BODY_BYTES)",
    415: "The request body is not `application/json`",
    429: "Too many attempts; see `Retry-After`",
    503: "MySQL or Redis is unreachable, or a conflicting change was in progress; retry after `Retry-After`",
}


def problem_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """The OpenAPI `responses` of a handler's problems, each status an `application/problem+json` Problem."""
    return {
        status: ResponseSpec(Problem, description=PROBLEM_DESCRIPTIONS[status], media_type=PROBLEM_MEDIA_TYPE,
                             generate_examples=False)
        for status in statuses
    }


def problem(
    status: int, title: str, detail: str, *, slug: str | None = None, headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response[dict[str, Any]]:
    body = {
        "type": PROBLEM_TYPE_BASE + slug if slug else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }
    return Response(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def app_error_handler(_: Request, exc: AppError) -> Response[dict[str, Any]]:
    return problem(exc.status_code, exc.title, exc.detail, slug=exc.slug, headers=exc.headers, **exc.extra)


def http_exception_handler(request: Request, exc: HTTPException) -> Response[dict[str, Any]]:
    """Litestar's own exceptions (validation, 404 route, 405, guards, rate limit) in the same shape."""
    status = exc.status_code
    headers = dict(exc.headers or {})
    extra: dict[str, Any] = {}
    if isinstance(exc, ValidationException):
        extra["errors"] = [_field_error(item) for item in (exc.extra or [])]
    if status == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    titles = {400: "Invalid input", 401: "Not authenticated", 403: "Forbidden", 404: "Not found",
              405: "Method not allowed", 413: "Request body too large", 415: "Unsupported media type",
              429: "Too many requests"}
    title = titles.get(status, "HTTP error")
    return problem(status, title, exc.detail or title, slug=title.lower().replace(" ", "-"), headers=headers,
                   **extra)


def unexpected_error_handler(request: Request, exc: Exception) -> Response[dict[str, Any]]:
    """A dependency that is down is a 503; anything else is a bug: log it, answer a bare 500."""
    if mysql_error_code(exc) in RETRYABLE_ERRORS:
        log.warning("lock conflict on %s %s: %r", request.method, request.url.path, exc)
        return problem(503, "Service unavailable", "A conflicting change was in progress; please retry",
                       slug="service-unavailable", headers={"Retry-After": "1"})
    if _is_dependency_down(exc):
        log.warning("dependency unavailable on %s %s: %r", request.method, request.url.path, exc)
        return problem(503, "Service unavailable", "A backing service is unreachable; try again shortly",
                       slug="service-unavailable", headers={"Retry-After": "2"})
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(HTTP_500_INTERNAL_SERVER_ERROR, "Internal server error", "Something went wrong on our side",
                   slug="internal")


def _is_dependency_down(exc: BaseException) -> bool:
    from asyncmy.errors import InterfaceError, OperationalError

    if isinstance(exc, RedisConnectionError | RedisTimeoutError | InterfaceError | ConnectionError | TimeoutError):
        return True
    # 2003 can't connect, 2006 gone away, 2013 lost connection, 1040 too many connections, 1205/1213 are not here
    return isinstance(exc, OperationalError) and exc.args[:1] != () and exc.args[0] in {1040, 2003, 2006, 2013}


# msgspec names a missing or unknown field only in its message ("Object missing required field `email`"),
# and a nested one by path ("... - at `$[1].end_time`"); Litestar then reports the whole body as the key.
_FIELD_IN_MESSAGE = re.compile(r"field `([^`]+)`|at `\$\.?([^`]*)`")


def _field_error(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        return {"field": "body", "message": str(item)}
    message = item.get("message", "")
    field = item.get("key")
    if field in (None, "data", "body") and (match := _FIELD_IN_MESSAGE.search(message)):
        field = match.group(1) or match.group(2) or "body"
    if field == "data":  # the handler's `data`: what the client sent is the body
        field, message = "body", "a JSON body is required" if message == "'data'" else message
    return {"field": field or item.get("source") or "body", "message": message}


EXCEPTION_HANDLERS = {
    AppError: app_error_handler,
    HTTPException: http_exception_handler,
    Exception: unexpected_error_handler,
}
