"""The dependencies handlers take, by name, and how they are resolved: one after another, not in a task group.

Litestar resolves the dependencies of a handler that share a level concurrently, a task each in an anyio task
group (litestar-org/litestar#4563, open: two dependencies instead of one cost a third of the throughput). Ours
are values at hand or one pool checkout, so the tasks cost more than they could overlap: on the booking path
about a fifth of the API's CPU per request. This resolves each level's dependencies in turn, with Litestar's own
per-dependency code; nothing else changes.
"""

from __future__ import annotations

from typing import Any

from arq.connections import ArqRedis
from litestar._kwargs.cleanup import DependencyCleanupGroup
from litestar._kwargs.dependencies import resolve_dependency
from litestar._kwargs.kwargs_model import KwargsModel
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency

from service.db import Connection, Database
from service.notify import Notifications
from service.schedule import ScheduleVersions
from service.security import CurrentUser, Passwords, UserCache
from service.settings import Settings

# What a handler parameter of that name receives (see the dependencies in app.py).
DatabaseDep = NamedDependency[Database]  # db: the pool, a statement in autocommit each
TransactionDep = NamedDependency[Connection]  # tx: the request's transaction, committed before the response
RedisDep = NamedDependency[ArqRedis]  # redis
UserDep = NamedDependency[CurrentUser]  # user: the caller, from the bearer token
PasswordsDep = NamedDependency[Passwords]  # passwords
SettingsDep = NamedDependency[Settings]  # settings
ListenerDep = NamedDependency[Notifications]  # listener: this process's pub/sub
ScheduleDep = NamedDependency[ScheduleVersions]  # schedule: versions of the doctors' schedules in this process
UserCacheDep = NamedDependency[UserCache]  # user_cache


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
