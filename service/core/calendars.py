"""Appointments as iCalendar (RFC 5545, written by ical.py) and the emails that carry them (MIME built with the
standard library's `email.mime` classes): invites on confirmation, cancellation and rescheduling, reminders, and
feeds.

One UID per appointment, so calendar programs update the same event; a higher SEQUENCE for every later change
(outbox.sequence_at).
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.utils import format_datetime, formataddr, make_msgid, parseaddr
from functools import cache
from typing import Any

from service.core import ical
from service.core.db import Row
from service.core.outbox import CANCELLED, CONFIRMED, REMINDER, RESCHEDULED, WAITLIST_OFFERED
from service.core.zones import zone_named

PRODID = "-//Doctor Appointments//Notifications//EN"
UID_DOMAIN = "doctor-appointments"


def uid(appointment_id: int) -> str:
    return f"appointment-{appointment_id}@{UID_DOMAIN}"


def _utc(value: datetime | str) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def vevent(appointment: dict[str, Any], doctor: Row | None, patient: Row | None, sequence: int, now: datetime,
           cancelled: bool = False) -> list[str]:
    """One appointment as a VEVENT's content lines, in UTC; the doctor as its organizer and the patient as its
    attendee where their emails are given (an invite), by name only otherwise (a feed)."""
    doctor_name = doctor["name"] if doctor else "your doctor"
    patient_name = patient["name"] if patient else "a patient"
    lines = ["BEGIN:VEVENT",
             f"UID:{ical.text(uid(appointment['id']))}",
             f"DTSTAMP:{ical.utc(_utc(now))}",
             f"DTSTART:{ical.utc(_utc(appointment['start_time']))}",
             f"DTEND:{ical.utc(_utc(appointment['end_time']))}",
             f"SEQUENCE:{int(sequence)}",
             f"STATUS:{'CANCELLED' if cancelled else 'CONFIRMED'}",
             f"SUMMARY:{ical.text(f'Appointment: {patient_name} with {doctor_name}')}"]
    if doctor is not None and "email" in doctor:
        lines.append(f"ORGANIZER;CN={ical.param(doctor['name'])}:mailto:{doctor['email']}")
    if patient is not None and "email" in patient:
        lines.append(f"ATTENDEE;CN={ical.param(patient['name'])};ROLE=REQ-PARTICIPANT:mailto:{patient['email']}")
    lines.append("END:VEVENT")
    return lines


def calendar(method: str | None, events: list[list[str]], name: str | None = None) -> bytes:
    """A VCALENDAR of these VEVENTs (vevent's lines), with METHOD for an invite and a name for a feed."""
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", f"PRODID:{ical.text(PRODID)}", "CALSCALE:GREGORIAN"]
    if method:
        lines.append(f"METHOD:{method}")
    if name:
        lines.append(f"X-WR-CALNAME:{ical.text(name)}")
    for event in events:
        lines += event
    lines.append("END:VCALENDAR")
    return ical.document(lines)


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
                       now: datetime, made: Invites | None = None) -> Message:
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
    # email.mime's classes (the compat32 policy) rather than EmailMessage: the same message on the wire, built in a
    # fifteenth of the time (EmailMessage parses every header it is given, the worker's largest cost per booking).
    text = utf8_part("plain", "\n".join(lines))
    invites = [] if event["type"] in (REMINDER, WAITLIST_OFFERED) else invite_parts(event, doctor, patient, now, made)
    # An offer (nothing booked yet) and a reminder (nothing changed in the invite) are the text alone.
    message: Message = text
    if invites:
        message = MIMEMultipart("mixed")
        message.attach(text)
        for part in invites:
            message.attach(part)
    message["From"] = sender(mail_from)
    message["To"] = formataddr((recipient["name"], recipient["email"]))
    message["Subject"] = Header(SUBJECTS[event["type"]].format(when=when), "utf-8")
    message["Date"] = format_datetime(_utc(now))
    # One Message-ID per event and recipient: a receiving server can drop a duplicate of a retried send.
    message["Message-ID"] = make_msgid(idstring=f"{event['public_id']}.{recipient['id']}", domain=UID_DOMAIN)
    return message


@cache
def sender(mail_from: str) -> str:
    """MAIL_FROM as a From header: a display name beyond ASCII is encoded, the address not. (One a process: parsing
    it is a fifth of the cost of a message.)"""
    return formataddr(parseaddr(mail_from))


def utf8_part(subtype: str, text: str, **params: str) -> MIMENonMultipart:
    """A text/`subtype` part in UTF-8, base64-encoded: what email.mime's MIMEText(text, subtype, "utf-8") makes (with
    `params` in its Content-Type), in a fifth of the time: MIMEText sets the charset by parsing and rewriting the
    header it has just written, and this runs twice a booking on the worker's path."""
    part = MIMENonMultipart("text", subtype, charset="utf-8", **params)
    part["Content-Transfer-Encoding"] = "base64"
    part.set_payload(base64.encodebytes(text.encode()).decode("ascii"))
    return part


Invites = dict[str, list[MIMENonMultipart]]


def invite_parts(event: Row, doctor: Row, patient: Row, now: datetime,
                 made: Invites | None = None) -> list[MIMENonMultipart]:
    """The event's text/calendar attachments: REQUEST (CANCEL on cancellation), and for a move, the old event's
    CANCEL first, since a move makes a new appointment (a new UID). `made` keeps each event's parts for its next
    recipient: the doctor's and the patient's invites are the same (a part is never changed once made, so two
    messages may carry it)."""
    made = {} if made is None else made
    parts = made.get(event["public_id"])
    if parts is None:
        data = event["data"]
        appointment, sequence = data["appointment"], data.get("sequence", 0)
        cancelled = event["type"] == CANCELLED
        parts = made[event["public_id"]] = []
        if event["type"] == RESCHEDULED and (previous := data.get("previous")):
            parts.append(calendar_part("CANCEL", "cancel.ics",
                                       calendar("CANCEL", [vevent(previous, doctor, patient, sequence, now, True)])))
        method = "CANCEL" if cancelled else "REQUEST"
        parts.append(calendar_part(method, "invite.ics",
                                   calendar(method, [vevent(appointment, doctor, patient, sequence, now, cancelled)])))
    return parts


def calendar_part(method: str, filename: str, ics: bytes) -> MIMENonMultipart:
    part = utf8_part("calendar", ics.decode(), method=method)
    part.add_header("Content-Disposition", "attachment", filename=filename)
    return part


def plain_text(message: Message) -> str:
    """The text part of a notification email, decoded."""
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            return part.get_payload(decode=True).decode(part.get_content_charset() or "utf-8")
    return ""
