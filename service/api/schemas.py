"""Request and response shapes that more than one controller uses, and the one way a list becomes a page."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, TypeVar

import msgspec
from litestar.pagination import OffsetPagination
from msgspec import Meta

from service.core.appointments import AppointmentStatus, RequestStatus
from service.core.db import Row
from service.core.times import from_row
from service.core.zones import known_zones

T = TypeVar("T")

# The patterns below are checked here by Python's `re` and published in the OpenAPI document, where they are
# ECMAScript, whose `\s` is not Python's (it lacks \x1c-\x1f and \x85, and has \ufeff). So whitespace is spelled
# out: exactly what Python's `\s` and str.strip() take for it.
WS = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# Not blank: some character is not whitespace. Anchored and whole, though unanchored `\S` would do: schemathesis
# reads a lone `\S` as "no whitespace at all" and would call "Dr House" invalid.
NOT_BLANK = rf"^[\s\S]*[^{WS}][\s\S]*$"
Specialty = Annotated[str, Meta(min_length=1, max_length=100, pattern=NOT_BLANK)]
# Every IANA time zone name the zoneinfo database knows (e.g. Europe/Berlin): the document lists exactly what the
# API takes.
TimeZoneName = enum.StrEnum("TimeZoneName", {name: name for name in sorted(known_zones())})


class AppointmentOut(msgspec.Struct):
    id: int
    booking_request_id: int
    doctor_id: int
    doctor_name: str
    patient_id: int
    patient_name: str
    appointment_type_id: int | None
    start_time: datetime
    end_time: datetime
    notes: str | None
    status: AppointmentStatus
    created_at: datetime
    cancelled_at: datetime | None
    cancelled_by: int | None
    cancel_reason: str | None


def page(cls: type[T], rows: Sequence[Row], total: int, limit: int, offset: int) -> OffsetPagination[T]:
    """A page of a list endpoint: its rows as `cls`, and where it stands in the whole."""
    return OffsetPagination([from_row(cls, row) for row in rows], limit=limit, offset=offset, total=total)


class BookingRequestOut(msgspec.Struct):
    request_id: int
    status: RequestStatus
    doctor_id: int
    appointment_type_id: int | None
    start_time: datetime
    end_time: datetime
    notes: str | None
    appointment_id: int | None
    reason: str | None = msgspec.field(default=None)
    created_at: datetime | None = None
    decided_at: datetime | None = None


def request_out(row: Row) -> BookingRequestOut:
    return from_row(BookingRequestOut, {**row, "request_id": row["id"]})
