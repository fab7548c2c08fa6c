"""The dependencies handlers take, by name (provided in app.py)."""

from __future__ import annotations

from litestar.di import NamedDependency
from redis.asyncio import Redis

from service.api.notifications import Notifications
from service.api.schedule_cache import ScheduleVersions
from service.api.security import UserCache
from service.core.accounts import CurrentUser, Passwords
from service.core.db import Connection, Database
from service.core.directory import DirectoryCache
from service.core.schedule import BookableTypes
from service.core.settings import Settings

# What a handler parameter of that name receives (see the dependencies in app.py).
DatabaseDep = NamedDependency[Database]  # db: the pool, a statement in autocommit each
TransactionDep = NamedDependency[Connection]  # tx: the request's transaction, committed before the response
RedisDep = NamedDependency[Redis]  # redis
UserDep = NamedDependency[CurrentUser]  # user: the caller, from the bearer token
PasswordsDep = NamedDependency[Passwords]  # passwords
SettingsDep = NamedDependency[Settings]  # settings
ListenerDep = NamedDependency[Notifications]  # listener: this process's pub/sub
ScheduleDep = NamedDependency[ScheduleVersions]  # schedule_versions: versions of the doctors' schedules in this process
UserCacheDep = NamedDependency[UserCache]  # user_cache
DirectoryCacheDep = NamedDependency[DirectoryCache]  # directory_cache: listings and free slots in this process
BookableTypesDep = NamedDependency[BookableTypes]  # bookable_types: the types bookings name, in this process

