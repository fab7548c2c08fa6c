"""The Redis pub/sub channels, named per deployment.

Pub/sub channels span every database of a Redis server, but booking requests, users and doctors belong to one
deployment, whose queue lives in one database. So each channel name carries that database's number: deployments
(or test runs) sharing a server never hear each other's messages, whose ids would name other rows.
"""

from __future__ import annotations

from redis.asyncio import Redis

DECISIONS = "booking:decisions"  # the worker's decisions, after its commit (service.booking.Decided)
USERS_CHANGED = "accounts:changed"  # a user id whose cached copy is out of date (a password change)
SCHEDULE_CHANGED = "doctors:schedule-changed"  # a doctor id whose windows or appointments changed


def channel(redis: Redis, name: str) -> str:
    return f"{name}:db{redis.connection_pool.connection_kwargs.get('db', 0)}"
