"""Every error the API answers, as RFC 9457 problem+json, through Litestar's problem-details plugin.

One shape: `type`, `title`, `status`, `detail`, for invalid input `errors[].field`, and a problem's own members
(a 409's `conflicting_window`, say). Domain errors (core/errors.py) and Litestar's own (validation, unknown
route, 405, guards, rate limit) are converted here; anything else is a 503 if a dependency is down, else a 500.
"""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.plugins.problem_details import ProblemDetailsConfig, ProblemDetailsException, ProblemDetailsPlugin
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.core.db import RETRYABLE_ERRORS, UNAVAILABLE_ERRORS, mysql_error_code
from service.core.errors import AppError

log = logging.getLogger("service")

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://docs.clinic.example/problems/"


class FieldProblem(msgspec.Struct):
    example: ClassVar[dict[str, Any]] = {"field": "start_time", "message": "must be on the 5-minute grid"}

    field: str
    message: str


class Problem(msgspec.Struct):
    """RFC 9457 problem details. Some problems add members of their own (e.g. a 409's `conflicting_window`)."""

    example: ClassVar[dict[str, Any]] = {
        "type": "https://docs.clinic.example/problems/invalid-input", "title": "Invalid input", "status": 400,
        "detail": "Validation failed for POST /appointments",
        "errors": [{"field": "start_time", "message": "must be on the 5-minute grid"}]}

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

HTTP_TITLES = {400: "Invalid input", 401: "Not authenticated", 403: "Forbidden", 404: "Not found",
               405: "Method not allowed", 413: "Request body too large", 415: "Unsupported media type",
               429: "Too many requests"}


def problem_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """The OpenAPI `responses` of a handler's problems, each status an `application/problem+json` Problem."""
    return {
        status: ResponseSpec(Problem, description=PROBLEM_DESCRIPTIONS[status], media_type=PROBLEM_MEDIA_TYPE,
                             generate_examples=False)
        for status in statuses
    }


def problem(status: int, title: str, detail: str, slug: str, headers: dict[str, str] | None = None,
            **extra: Any) -> ProblemDetailsException:
    return ProblemDetailsException(status_code=status, title=title, detail=detail, type_=PROBLEM_TYPE_BASE + slug,
                                   headers=headers, extra=extra)


def from_app_error(exc: AppError) -> ProblemDetailsException:
    return problem(exc.status_code, exc.title, exc.detail, exc.slug, exc.headers, **exc.extra)


def internal_error() -> ProblemDetailsException:
    """A bug, answered without a word of what went wrong (that is for the log)."""
    return problem(500, "Internal server error", "Something went wrong on our side", "internal")


def from_http_exception(exc: HTTPException) -> ProblemDetailsException:
    """Litestar's own exceptions (validation, 404 route, 405, guards, rate limit) in the same shape."""
    status = exc.status_code
    if status >= 500:  # Litestar's own (ImproperlyConfiguredException, say) carry a detail meant for developers
        log.error("unhandled %s: %s", type(exc).__name__, exc.detail, exc_info=exc)
        return internal_error()
    headers = dict(exc.headers or {})
    extra: dict[str, Any] = {}
    if isinstance(exc, ValidationException):
        extra["errors"] = [_field_error(item) for item in (exc.extra or [])]
    if status == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    title = HTTP_TITLES.get(status, "HTTP error")
    return problem(status, title, exc.detail or title, title.lower().replace(" ", "-"), headers, **extra)


def unexpected_error_handler(request: Request, exc: Exception) -> Response[Any]:
    """A dependency that is down is a 503; anything else is a bug: log it, answer a bare 500."""
    if mysql_error_code(exc) in RETRYABLE_ERRORS:
        log.warning("lock conflict on %s %s: %r", request.method, request.url.path, exc)
        answer = problem(503, "Service unavailable", "A conflicting change was in progress; please retry",
                         "service-unavailable", {"Retry-After": "1"})
    elif _is_dependency_down(exc):
        log.warning("dependency unavailable on %s %s: %r", request.method, request.url.path, exc)
        answer = problem(503, "Service unavailable", "A backing service is unreachable; try again shortly",
                         "service-unavailable", {"Retry-After": "2"})
    else:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        answer = internal_error()
    return answer.to_response(request)


def status_of(exc: Exception) -> int:
    """The status the app answers `exc` with, for what sees the exception but not the answer (metrics)."""
    if isinstance(exc, AppError | HTTPException):
        return exc.status_code if exc.status_code < 500 or isinstance(exc, AppError) else 500
    return 503 if mysql_error_code(exc) in RETRYABLE_ERRORS or _is_dependency_down(exc) else 500


def _is_dependency_down(exc: BaseException) -> bool:
    from asyncmy.errors import InterfaceError, OperationalError

    if isinstance(exc, RedisConnectionError | RedisTimeoutError | InterfaceError | ConnectionError | TimeoutError):
        return True
    return isinstance(exc, OperationalError) and mysql_error_code(exc) in UNAVAILABLE_ERRORS


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


def problem_details_plugin() -> ProblemDetailsPlugin:
    return ProblemDetailsPlugin(ProblemDetailsConfig(exception_to_problem_detail_map={
        AppError: from_app_error,  # type: ignore[dict-item]
        HTTPException: from_http_exception,  # type: ignore[dict-item]
    }))


EXCEPTION_HANDLERS = {Exception: unexpected_error_handler}
