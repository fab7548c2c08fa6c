"""Appointments: queue-backed booking and rescheduling, reading, statuses, cancelling, history."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar

import msgspec
from litestar import Controller, Response, delete, get, patch, post
from litestar.openapi import ResponseSpec
from litestar.params import Body, QueryParameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_202_ACCEPTED
from msgspec import Meta

from service.api.answers import BookingAccepted, IdempotencyKey, Prefer, accepted
from service.api.dependencies import (
    BookableTypesDep,
    DatabaseDep,
    ListenerDep,
    RedisDep,
    ScheduleDep,
    SettingsDep,
    TransactionDep,
    UserDep,
)
from service.api.params import MAX_ID, AppointmentStatusFilter, From, Id, Limit, Offset, To
from service.api.problems import problem_responses
from service.api.schedule_cache import schedule_changed
from service.api.schemas import (
    AppointmentOut,
    AppointmentPage,
    BookingIn,
    HistoryEntryOut,
    HistoryOut,
    appointment_out,
    appointments_page,
)
from service.api.security import requires_patient_or_staff
from service.core import appointments, history, lifecycle, staff
from service.core.appointments import AppointmentStatus
from service.core.times import from_row


class RescheduleIn(msgspec.Struct, forbid_unknown_fields=True):
    """The new start; optionally another of the doctor's types, or another doctor (then a type of theirs, or the
    same length)."""

    example: ClassVar[dict[str, Any]] = {"start_time": "2030-01-15T11:00:00Z"}

    start_time: datetime
    appointment_type_id: Annotated[int, Meta(ge=1, le=MAX_ID)] | None = None
    doctor_id: Annotated[int, Meta(ge=1, le=MAX_ID)] | None = None


class StatusIn(msgspec.Struct, forbid_unknown_fields=True):
    example: ClassVar[dict[str, Any]] = {"status": "checked_in"}

    status: AppointmentStatus
    reason: Annotated[str, Meta(min_length=1, max_length=500)] | None = None


class AppointmentController(Controller):
    path = "/appointments"
    tags = ["appointments"]

    @post(
        "/", guards=[requires_patient_or_staff], status_code=HTTP_202_ACCEPTED, operation_id="bookAppointment",
        summary="Ask for an appointment; a worker decides it",
        description=(
            "Stores a booking request and answers 202 with its status URL. Send `Prefer: wait=N` (N ≤ 10) to "
            "wait for the decision: 201 with the appointment, or 409 with the reason, if it comes in time. "
            "The same `Idempotency-Key` returns the first request instead of making another. A patient books for "
            "themselves; staff book on behalf of the patient named by `patient_id` (the request keeps who asked, "
            "and its status URL answers both). A time this API process knows was given away moments ago is refused "
            "at once: 409 with `reason` `slot_taken` and no `request_id` (nothing is stored)."
        ),
        responses={HTTP_201_CREATED: ResponseSpec(AppointmentOut, description="Booked (with Prefer: wait)"),
                   **problem_responses(400, 401, 403, 404, 409, 413, 415, 503)},
    )
    async def book(
        self,
        data: Annotated[BookingIn, Body()],
        user: UserDep,
        db: DatabaseDep,
        redis: RedisDep,
        listener: ListenerDep,
        bookable_types: BookableTypesDep,
        schedule_versions: ScheduleDep,
        idempotency_key: IdempotencyKey = None,
        prefer: Prefer = None,
    ) -> Response[BookingAccepted]:
        patient_id = await staff.booking_patient(db, user, data.patient_id)
        request_id, stored = await appointments.store_request(
            db, user, patient_id, data.doctor_id, data.start_time, data.end_time, data.notes, idempotency_key,
            data.appointment_type_id, types=bookable_types, known_taken=schedule_versions.taken.taken)
        return await accepted(db, redis, listener, user, data.doctor_id, request_id, stored, prefer)

    @post(
        "/{appointment_id:int}/reschedule", status_code=HTTP_202_ACCEPTED, operation_id="rescheduleAppointment",
        summary="Move an appointment (its patient, or staff); a worker decides it",
        description=(
            "Stores a reschedule request, answered like a booking: 202 with its status URL, or with `Prefer: wait=N` "
            "201 with the new appointment or 409 with the reason. The worker decides it under the lock of the "
            "doctor(s) involved, with every rule of a booking, treating the appointment's own current time as free: "
            "on success the old appointment becomes `rescheduled` (`rescheduled_to`) and the new one `confirmed` "
            "(`rescheduled_from`); if the new time cannot be had, the old appointment stays as it was. Without "
            "`appointment_type_id` the appointment keeps its type (same doctor) or its length. A patient cannot "
            "move it later than the cancellation notice before its start (409 `too_late_to_cancel`)."
        ),
        responses={HTTP_201_CREATED: ResponseSpec(AppointmentOut, description="Moved (with Prefer: wait)"),
                   **problem_responses(400, 401, 403, 404, 409, 413, 415, 503)},
    )
    async def reschedule(
        self,
        appointment_id: Id,
        data: Annotated[RescheduleIn, Body()],
        user: UserDep,
        db: DatabaseDep,
        redis: RedisDep,
        listener: ListenerDep,
        settings: SettingsDep,
        idempotency_key: IdempotencyKey = None,
        prefer: Prefer = None,
    ) -> Response[BookingAccepted]:
        request_id, stored, appointment = await lifecycle.request_reschedule(
            db, settings, user, appointment_id, data.start_time, data.appointment_type_id, data.doctor_id,
            idempotency_key)
        doctor_id = data.doctor_id or appointment["doctor_id"]
        return await accepted(db, redis, listener, user, doctor_id, request_id, stored, prefer)

    @get("/my-appointments", operation_id="listMyAppointments",
         summary="Your appointments: a patient's bookings or a doctor's schedule",
         description="Staff have no appointments of their own: 403.",
         responses=problem_responses(400, 401, 403, 503))
    async def my_appointments(
        self, user: UserDep, db: DatabaseDep, start: From = None, end: To = None,
        status: AppointmentStatusFilter = None, limit: Limit = 50, offset: Offset = 0,
    ) -> AppointmentPage:
        return await appointments_page(db, user, status, start, end, limit, offset)

    @get("/{appointment_id:int}", operation_id="getAppointment", summary="One of your appointments",
         responses=problem_responses(400, 401, 404, 503))
    async def get_appointment(self, appointment_id: Id, user: UserDep, db: DatabaseDep) -> AppointmentOut:
        return appointment_out(await appointments.find_appointment(db, appointment_id, user))

    @patch("/{appointment_id:int}", operation_id="setAppointmentStatus",
           summary="Set an appointment's status (its doctor, or staff)",
           description=(
               "`confirmed` → `checked_in` (from an hour before the start) → `completed`; `confirmed` → `completed` "
               "or `no_show` (once it has started); `confirmed` → `cancelled` (with a reason, as DELETE). Any other "
               "change is a 409 naming the allowed ones (`allowed`); the current status again changes nothing. "
               "`fhir_status` gives each status as FHIR's Appointment.status code."),
           responses=problem_responses(400, 401, 403, 404, 409, 413, 415, 503))
    async def set_status(
        self, appointment_id: Id, data: Annotated[StatusIn, Body()], user: UserDep, tx: TransactionDep,
        redis: RedisDep, schedule_versions: ScheduleDep, settings: SettingsDep,
    ) -> AppointmentOut:
        appointment, changed = await lifecycle.change_status(tx, settings, appointment_id, user, data.status,
                                                             data.reason, redis)
        if changed and appointment["status"] == "cancelled":
            await schedule_changed(tx, redis, schedule_versions, appointment["doctor_id"])
        return appointment_out(appointment)

    @delete("/{appointment_id:int}", status_code=200, operation_id="cancelAppointment",
            summary="Cancel an appointment (its patient, or its doctor or staff with a reason)",
            description=("A patient cannot cancel later than the cancellation notice before the start "
                         "(`CANCEL_NOTICE_MINUTES`, or the appointment type's): 409 `too_late_to_cancel` with "
                         "`cancellable_until`. Cancelling a cancelled appointment again answers it as it is."),
            responses=problem_responses(400, 401, 404, 409, 503))
    async def cancel(
        self,
        appointment_id: Id,
        user: UserDep,
        tx: TransactionDep,
        redis: RedisDep,
        schedule_versions: ScheduleDep,
        settings: SettingsDep,
        reason: Annotated[str | None, QueryParameter(min_length=1, max_length=500, description=(
            "Why; required when the doctor or staff cancel"))] = None,
    ) -> AppointmentOut:
        appointment, cancelled = await lifecycle.cancel(tx, settings, appointment_id, user, reason, redis)
        if cancelled:
            await schedule_changed(tx, redis, schedule_versions, appointment["doctor_id"])
        return appointment_out(appointment)

    @get("/{appointment_id:int}/history", operation_id="getAppointmentHistory",
         summary="Every change of an appointment and of the request that made it, oldest first",
         description="Its patient, its doctor and staff. Rows are appended in the transaction of each change and "
                     "never changed afterwards.",
         responses=problem_responses(400, 401, 404, 503))
    async def get_history(self, appointment_id: Id, user: UserDep, db: DatabaseDep) -> HistoryOut:
        appointment = await appointments.find_appointment(db, appointment_id, user)
        rows = await history.of_appointment(db, appointment)
        return HistoryOut(items=[from_row(HistoryEntryOut, row) for row in rows])
