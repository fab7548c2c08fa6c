"""Appointments as iCalendar (RFC 5545, built with the `icalendar` library) and the emails that carry them (MIME built
with `email.message.EmailMessage`): invites on confirmation, cancellation and rescheduling, reminders, and feeds.

One UID per appointment, so calendar programs update the same event; a higher SEQUENCE for every later change
(outbox.sequence_at).
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import default as default_policy
from email.utils import formataddr, make_msgid
from typing import Any

from icalendar import Calendar, vCalAddress
from icalendar import Event as VEvent

from service.core.db import Row
from service.core.outbox import CANCELLED, CONFIRMED, REMINDER, RESCHEDULED, WAITLIST_OFFERED
from service.core.zones import zone_named


class _Headers(HeaderRegistry):
    """The standard header classes, made once per name: the stock registry builds a new class for every header it
    is asked for, a third of the time it takes to build a notification email."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        made = self._made.get(name.lower())
        if made is None:
            made = self._made[name.lower()] = super().__getitem__(name)
        return made


POLICY = default_policy.clone(header_factory=_Headers())
PRODID = "-//Doctor Appointments//Notifications//EN"
UID_DOMAIN = "doctor-appointments"


def uid(appointment_id: int) -> str:
    return f"appointment-{appointment_id}@{UID_DOMAIN}"


def _utc(value: datetime | str) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _address(person: Row, role: str | None = None) -> vCalAddress:
    address = vCalAddress(f"mailto:{person['email']}")
    address.params["CN"] = person["name"]
    if role:
        address.params["ROLE"] = role
    return address


def vevent(appointment: dict[str, Any], doctor: Row | None, patient: Row | None, sequence: int, now: datetime,
           cancelled: bool = False) -> VEvent:
    """One appointment as a VEVENT, in UTC."""
    event = VEvent()
    event.add("uid", uid(appointment["id"]))
    event.add("dtstamp", _utc(now))
    event.add("dtstart", _utc(appointment["start_time"]))
    event.add("dtend", _utc(appointment["end_time"]))
    event.add("sequence", sequence)
    event.add("status", "CANCELLED" if cancelled else "CONFIRMED")
    doctor_name = doctor["name"] if doctor else "your doctor"
    patient_name = patient["name"] if patient else "a patient"
    event.add("summary", f"Appointment: {patient_name} with {doctor_name}")
    if doctor is not None and "email" in doctor:
        event.add("organizer", _address(doctor))
    if patient is not None and "email" in patient:
        event.add("attendee", _address(patient, "REQ-PARTICIPANT"))
    return event


def calendar(method: str | None, events: list[VEvent], name: str | None = None) -> bytes:
    cal = Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    if method:
        cal.add("method", method)
    if name:
        cal.add("x-wr-calname", name)
    for event in events:
        cal.add_component(event)
    return cal.to_ical()


def local_span(appointment: dict[str, Any], timezone: str) -> str:
    """"Tuesday 15 January 2030, 10:00–10:30 (Europe/Berlin, UTC+01:00)": the appointment on the doctor's clock."""
    zone = zone_named(timezone)
    start, end = _utc(appointment["start_time"]).astimezone(zone), _utc(appointment["end_time"]).astimezone(zone)
    offset = f"{start:%z}"
    return f"{start:%A %d %B %Y, %H:%M}–{end:%H:%M} ({timezone}, UTC{offset[:3]}:{offset[3:]})"


def local_time(moment: str | datetime, timezone: str) -> str:
    """"10:05 (Europe/Berlin)" on the doctor's clock."""
    return f"{_utc(moment).astimezone(zone_named(timezone)):%H:%M} ({timezone})"


SUBJECTS = {
    CONFIRMED: "Appointment confirmed: {when}",
    CANCELLED: "Appointment cancelled: {when}",
    RESCHEDULED: "Appointment moved to {when}",
    REMINDER: "Reminder: your appointment on {when}",
    WAITLIST_OFFERED: "A time came free for you: {when}",
}


def notification_email(event: Row, recipient: Row, doctor: Row, patient: Row, mail_from: str,
                       now: datetime) -> EmailMessage:
    """The email of an outbox event for one recipient (the doctor or the patient): a text part with the times on
    the doctor's clock, and the invite as a text/calendar attachment (REQUEST, or CANCEL on cancellation)."""
    data = event["data"]
    appointment = data.get("appointment") or data["hold"]  # an offer from the waitlist is a hold, not yet booked
    when = local_span(appointment, doctor["timezone"])
    other = patient if recipient["id"] == doctor["id"] else doctor
    lines = [f"Hello {recipient['name']},", ""]
    if event["type"] == CONFIRMED:
        lines.append(f"Your appointment with {other['name']} is confirmed for {when}.")
    elif event["type"] == CANCELLED:
        lines.append(f"Your appointment with {other['name']} on {when} is cancelled.")
        if appointment.get("cancel_reason"):
            lines.append(f"Reason: {appointment['cancel_reason']}")
    elif event["type"] == RESCHEDULED:
        lines.append(f"Your appointment with {other['name']} has moved to {when}.")
        if previous := data.get("previous"):
            lines.append(f"It was on {local_span(previous, doctor['timezone'])}.")
    elif event["type"] == WAITLIST_OFFERED:
        hold = data["hold"]
        lines += [f"A time with {other['name']} on {when} has come free, and it is held for you until "
                  f"{local_time(hold['expires_at'], doctor['timezone'])}.",
                  f"Book it with POST /holds/{hold['id']}/confirm before then, or release it with DELETE "
                  f"/holds/{hold['id']} so that the next patient in line gets it."]
    else:
        lines.append(f"This is a reminder of your appointment with {other['name']} on {when}.")
    if event["type"] not in (REMINDER, WAITLIST_OFFERED):
        lines += ["", "The attached invite adds it to your calendar (or updates it there)."]
    message = EmailMessage(policy=POLICY)
    message["From"] = mail_from
    message["To"] = formataddr((recipient["name"], recipient["email"]))
    message["Subject"] = SUBJECTS[event["type"]].format(when=when)
    # One Message-ID per event and recipient: a receiving server can drop a duplicate of a retried send.
    message["Message-ID"] = make_msgid(idstring=f"{event['public_id']}.{recipient['id']}", domain=UID_DOMAIN)
    message.set_content("\n".join(lines))
    if event["type"] in (REMINDER, WAITLIST_OFFERED):  # nothing booked yet, or nothing changed in the invite
        return message
    cancelled = event["type"] == CANCELLED
    if event["type"] == RESCHEDULED and (previous := data.get("previous")):
        # A move makes a new appointment (a new UID): the old event is withdrawn, the new one invited.
        attach_invite(message, "CANCEL", vevent(previous, doctor, patient, data.get("sequence", 0), now, True),
                      "cancel.ics")
    attach_invite(message, "CANCEL" if cancelled else "REQUEST",
                  vevent(appointment, doctor, patient, data.get("sequence", 0), now, cancelled), "invite.ics")
    return message


def attach_invite(message: EmailMessage, method: str, event: VEvent, filename: str) -> None:
    message.add_attachment(calendar(method, [event]), maintype="text", subtype="calendar", filename=filename,
                           params={"method": method, "charset": "utf-8"})
