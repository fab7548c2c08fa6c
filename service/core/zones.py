"""IANA time zones: which names are real, and the zone of a name."""

from __future__ import annotations

import zoneinfo
from functools import cache

from service.core.errors import InvalidInput


@cache
def known_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def check_timezone(name: str, field: str = "timezone") -> str:
    """An IANA time zone name the zoneinfo database knows (e.g. Europe/Berlin)."""
    if name not in known_zones():
        raise InvalidInput("not an IANA time zone name, e.g. Europe/Berlin or America/New_York", field=field)
    return name


@cache
def zone_named(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)
