"""Request and response shapes that more than one controller uses, and the one way a list becomes a page."""

from __future__ import annotations

import enum
import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import msgspec
from msgspec import Meta

from service.api.params import MAX_ID
from service.core import appointments, history, holds
from service.core.accounts import CurrentUser
from service.core.appointments import AppointmentStatus, RequestKind, RequestStatus
from service.core.db import Database, Row
from service.core.lifecycle import FHIR_STATUS
from service.core.times import from_row, utcnow
from service.core.zones import known_zones

# The patterns below are checked here by Python's `re` and published in the OpenAPI document, where they are
# ECMAScript, whose `\s` is not Python's (it lacks \x1c-\x1f and \x85, and has \ufeff). So whitespace is spelled
# out: exactly what Python's `\s` and str.strip() take for it.
WS = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# Not blank: some character is not whitespace. Anchored and whole, though unanchored `\S` would do: schemathesis
# reads a lone `\S` as "no whitespace at all" and would call "Dr House" invalid.
NOT_BLANK = rf"^[\s\S]*[^{WS}][\s\S]*$"
Specialty = Annotated[str, Meta(min_length=1, max_length=100, pattern=NOT_BLANK)]


def zone_member_name(zone: str) -> str:
    """The name of a zone's member of TimeZoneName, for generated clients: `Europe/Berlin` → `EUROPE_BERLIN`,
    `Etc/GMT+5` → `ETC_GMT_PLUS_5` (the sign of an offset spelt out: `Etc/GMT-5` is the opposite offset)."""
    signed = re.sub(r"\+(?=\d)", "_PLUS_", re.sub(r"-(?=\d)", "_MINUS_", zone))
    return re.sub(r"[^A-Za-z0-9]+", "_", signed).strip("_").upper()


# Every IANA time zone name the zoneinfo database knows (e.g. Europe/Berlin): the document lists exactly what the
# API takes, and names each member (x-enum-varnames, extensions.EnumMemberNamesPlugin).
TimeZoneName = enum.StrEnum("TimeZoneName", {zone_member_name(name): name for name in sorted(known_zones())})


class AppointmentOut(msgspec.Struct):
    """An appointment, as its doctor and its patient see it (no one else sees it at all): the patient's email is
    how the doctor reaches them."""

    example: ClassVar[dict[str, Any]] = {
        "id": 58, "booking_request_id": 104, "doctor_id": 7, "doctor_name": "Dr Ada Weber", "patient_id": 12,
        "patient_name": "Pat Jones", "patient_email": "pat.jones@example.com", "appointment_type_id": None,
        "start_time": "2030-01-15T10:00:00Z", "end_time": "2030-01-15T10:30:00Z",
        "notes": "Follow-up on the blood test", "status": "confirmed", "fhir_status": "booked",
        "status_changed_at": None, "rescheduled_from": None, "rescheduled_to": None,
        "created_at": "2030-01-08T14:02:11Z", "cancelled_at": None, "cancelled_by": None, "cancel_reason": None,
        "patient_no_shows": None}

    id: int
    booking_request_id: int
    doctor_id: int
    doctor_name: str
    patient_id: int
    patient_name: str
    patient_email: str
    appointment_type_id: int | None
    start_time: datetime
    end_time: datetime
    notes: str | None
    status: AppointmentStatus
    fhir_status: FhirStatus
    status_changed_at: datetime | None
    rescheduled_from: int | None
    rescheduled_to: int | None
    created_at: datetime
    cancelled_at: datetime | None
    cancelled_by: int | None
    cancel_reason: str | None
    # In a doctor's schedule: how many of this patient's appointments (with any doctor) were no-shows.
    patient_no_shows: int | None = None


FhirStatus = Literal["booked", "checked-in", "fulfilled", "noshow", "cancelled"]


def appointment_out(row: Row) -> AppointmentOut:
    return from_row(AppointmentOut, {**row, "fhir_status": FHIR_STATUS[row["status"]]})


class HistoryEntryOut(msgspec.Struct):
    """One change: who (`actor_role` `system` is the worker deciding a request), what, from which status to which."""

    at: datetime
    actor_id: int | None
    actor_role: str
    action: history.Action
    from_status: str | None
    to_status: str | None
    reason: str | None
    booking_request_id: int | None
    appointment_id: int | None


class HistoryOut(msgspec.Struct):
    example: ClassVar[dict[str, Any]] = {"items": [
        {"at": "2030-01-08T14:02:11Z", "actor_id": 12, "actor_role": "Patient", "action": "requested",
         "from_status": None, "to_status": "pending", "reason": None, "booking_request_id": 104,
         "appointment_id": None},
        {"at": "2030-01-08T14:02:11Z", "actor_id": None, "actor_role": "system", "action": "confirmed",
         "from_status": None, "to_status": "confirmed", "reason": None, "booking_request_id": 104,
         "appointment_id": 58}]}

    items: list[HistoryEntryOut]


class BookingRequestOut(msgspec.Struct):
    example: ClassVar[dict[str, Any]] = {
        "request_id": 104, "status": "confirmed", "kind": "book", "reschedules": None, "hold_id": None,
        "patient_id": 12, "requested_by": None, "doctor_id": 7, "appointment_type_id": None,
        "start_time": "2030-01-15T10:00:00Z", "end_time": "2030-01-15T10:30:00Z",
        "notes": "Follow-up on the blood test", "appointment_id": 58, "reason": None,
        "created_at": "2030-01-08T14:02:11Z", "decided_at": "2030-01-08T14:02:11Z"}

    request_id: int
    status: RequestStatus
    kind: RequestKind
    reschedules: int | None  # a reschedule: the appointment it moves
    hold_id: int | None  # a hold request's hold, once held; the hold a confirm_hold confirms
    patient_id: int
    # The staff member who asked on the patient's behalf; null when the patient asked.
    requested_by: int | None
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


class BookingIn(msgspec.Struct, forbid_unknown_fields=True):
    """A start and an end, or a start and one of the doctor's appointment types (its length and rules). Staff name
    the patient they book for (`patient_id`); a patient books for themselves and names no one."""

    example: ClassVar[dict[str, Any]] = {
        "doctor_id": 7, "start_time": "2030-01-15T10:00:00Z", "end_time": "2030-01-15T10:30:00Z",
        "notes": "Follow-up on the blood test"}

    doctor_id: Annotated[int, Meta(ge=1, le=MAX_ID)]
    start_time: datetime
    end_time: datetime | None = None
    appointment_type_id: Annotated[int, Meta(ge=1, le=MAX_ID)] | None = None
    notes: Annotated[str, Meta(max_length=2000)] | None = None
    patient_id: Annotated[int, Meta(ge=1, le=MAX_ID, description=(
        "Staff only, and required for staff: the patient booked for (404 if no such patient). A patient sending "
        "it gets a 403."))] | None = None


HoldStatus = Literal["held", "confirmed", "released", "expired"]


class HoldOut(msgspec.Struct):
    """A slot kept for its patient until `expires_at`: confirm it (POST /holds/{id}/confirm) or let it go."""

    example: ClassVar[dict[str, Any]] = {
        "id": 31, "status": "held", "doctor_id": 7, "patient_id": 12, "appointment_type_id": 3,
        "start_time": "2030-01-15T10:00:00Z", "end_time": "2030-01-15T10:30:00Z", "notes": None,
        "expires_at": "2030-01-08T14:07:11Z", "booking_request_id": 104, "waitlist_entry_id": None,
        "appointment_id": None, "created_at": "2030-01-08T14:02:11Z", "ended_at": None}

    id: int
    status: HoldStatus
    doctor_id: int
    patient_id: int
    appointment_type_id: int | None
    start_time: datetime
    end_time: datetime
    notes: str | None
    expires_at: datetime
    booking_request_id: int | None  # the hold request that made it (none: a waitlist offer)
    waitlist_entry_id: int | None
    appointment_id: int | None  # once confirmed
    created_at: datetime
    ended_at: datetime | None


def hold_out(row: Row) -> HoldOut:
    return from_row(HoldOut, {**row, "status": holds.shown_status(row, utcnow())})


class Page(msgspec.Struct):
    """A page of a list: where it stands in the whole. Each kind of page declares its own `items`, so that the document
    names the page after its kind and its items by their schema (Litestar names a generic struct after its module
    path, and documents a subclass of one with bare objects for items)."""

    limit: int
    offset: int
    total: int


def page_example(item: Any) -> dict[str, Any]:
    """The example of a page of `item`s: one item, of that kind's example."""
    return {"items": [item.example], "limit": 50, "offset": 0, "total": 1}


class AppointmentPage(Page):
    example: ClassVar[dict[str, Any]] = page_example(AppointmentOut)

    items: list[AppointmentOut]


class BookingRequestPage(Page):
    example: ClassVar[dict[str, Any]] = page_example(BookingRequestOut)

    items: list[BookingRequestOut]


P = TypeVar("P", bound=Page)


def page(kind: type[P], items: list[Any], total: int, limit: int, offset: int) -> P:
    """A page of a list endpoint: its items, and where it stands in the whole."""
    return kind(items=items, limit=limit, offset=offset, total=total)


async def appointments_page(db: Database, user: CurrentUser, status: str | None, start: str | None,
                            end: str | None, limit: int, offset: int) -> AppointmentPage:
    """The caller's appointments as a page: what both `my-appointments` endpoints answer."""
    rows, total = await appointments.list_appointments(db, user, status, start, end, limit, offset)
    return page(AppointmentPage, [appointment_out(row) for row in rows], total, limit, offset)
