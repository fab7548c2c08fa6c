"""GET /health: whether MySQL and Redis answer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, ClassVar, Literal

import msgspec
from litestar import Controller, Response, get
from litestar.openapi import ResponseSpec

from service.api.dependencies import DatabaseDep, RedisDep
from service.api.security import PUBLIC

CHECK_TIMEOUT = 2.0
State = Literal["ok", "unavailable"]


class HealthOut(msgspec.Struct):
    example: ClassVar[dict[str, Any]] = {"status": "ok", "mysql": "ok", "redis": "ok"}

    status: State
    mysql: State
    redis: State


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get("/", **PUBLIC, operation_id="health", summary="Whether MySQL and Redis answer",
         responses={503: ResponseSpec(HealthOut, description="MySQL or Redis does not answer")})
    async def health(self, db: DatabaseDep, redis: RedisDep) -> Response[HealthOut]:
        mysql_ok, redis_ok = await asyncio.gather(_answers(db.fetch_value("ping")), _answers(redis.ping()))
        body = HealthOut(
            status="ok" if mysql_ok and redis_ok else "unavailable",
            mysql="ok" if mysql_ok else "unavailable",
            redis="ok" if redis_ok else "unavailable",
        )
        return Response(body, status_code=200 if body.status == "ok" else 503)


async def _answers(check: Awaitable[Any]) -> bool:
    try:
        await asyncio.wait_for(check, CHECK_TIMEOUT)
    except Exception:  # noqa: BLE001 - any failure means "not answering"
        return False
    return True
