"""The domain's errors: what any layer may raise on purpose. The HTTP layer maps them to problems (api/problems.py)."""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    """Base of every error raised on purpose. Subclasses set the HTTP status, a short title and a slug for `type`."""

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
