"""What service/core/ical.py writes, read back by the `icalendar` library as calendar programs would read it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from icalendar import Calendar

from service.core import ical
from service.core.calendars import calendar, vevent

NAMES = [
    "Ada Lovelace",
    "Smith, John; Jr.",  # TEXT's separators
    'Dr "Q" O\'Neil',  # a double quote, which a parameter value cannot hold as it is
    "back\\slash and caret ^ and colon: yes",
    "two\nlines\r\nand\rthree",  # line breaks: escaped in TEXT, ^n in a parameter
    "Żaneta Öberg 李小龍 🩺",  # beyond ASCII, four-octet characters too
    "名" * 90,  # long: folded, never inside a character
    "tab\there, and a bell\x07 and nul\x00",  # control characters other than TAB are dropped
]


def written(doctor_name: str, patient_name: str, feed_name: str | None = None) -> tuple[bytes, Calendar]:
    event = vevent({"id": 42, "start_time": datetime(2030, 3, 31, 0, 30), "end_time": datetime(2030, 3, 31, 1)},
                   {"name": doctor_name, "email": "doc@clinic.example"},
                   {"name": patient_name, "email": "pat@example.com"}, 3, datetime(2030, 3, 1, 12, tzinfo=UTC))
    body = calendar("REQUEST", [event], name=feed_name)
    return body, Calendar.from_ical(body)


def expected(name: str) -> str:
    """What a name reads back as: line breaks as LF, control characters but TAB dropped."""
    one = name.replace("\r\n", "\n").replace("\r", "\n")
    return "".join(c for c in one if c in "\t\n" or c.isprintable())


@pytest.mark.parametrize("name", NAMES)
def test_names_read_back_as_written_in_every_place_they_go(name: str) -> None:
    body, parsed = written(name, name, feed_name=name)
    [event] = parsed.walk("VEVENT")
    assert str(event["SUMMARY"]) == f"Appointment: {expected(name)} with {expected(name)}"
    assert event["ORGANIZER"].params["CN"] == expected(name)
    assert event["ATTENDEE"].params["CN"] == expected(name)
    assert event["ATTENDEE"].params["ROLE"] == "REQ-PARTICIPANT"
    assert str(event["ORGANIZER"]) == "mailto:doc@clinic.example"
    # An X- property is TEXT (RFC 5545 §3.8.8.2), and calendar programs read it so; icalendar leaves it undecoded,
    # and decodes it under the name of a TEXT property it knows.
    assert str(Calendar.from_ical(body.replace(b"X-WR-CALNAME:", b"DESCRIPTION:"))["DESCRIPTION"]) == expected(name)
    assert body.endswith(b"END:VCALENDAR\r\n") and b"\n" not in body.replace(b"\r\n", b"")
    for line in body.split(b"\r\n"):
        assert len(line) <= ical.FOLD_AT
        line.decode()  # a whole number of characters: no character's octets split across a fold


def test_the_event_carries_its_times_in_utc_and_its_identity() -> None:
    _, parsed = written("Dr A", "Pat")
    assert (parsed["METHOD"], parsed["VERSION"], parsed["PRODID"]) == (
        "REQUEST", "2.0", "-//Doctor Appointments//Notifications//EN")
    [event] = parsed.walk("VEVENT")
    assert event.decoded("DTSTART") == datetime(2030, 3, 31, 0, 30, tzinfo=UTC)
    assert event.decoded("DTEND") == datetime(2030, 3, 31, 1, tzinfo=UTC)
    assert event.decoded("DTSTAMP") == datetime(2030, 3, 1, 12, tzinfo=UTC)
    assert (str(event["UID"]), event["SEQUENCE"], event["STATUS"]) == (
        "appointment-42@doctor-appointments", 3, "CONFIRMED")


def test_a_feed_event_names_people_without_addresses() -> None:
    event = vevent({"id": 1, "start_time": datetime(2030, 1, 1, 9), "end_time": datetime(2030, 1, 1, 9, 30)},
                   {"name": "Dr A"}, {"name": "Pat"}, 0, datetime(2029, 12, 1), cancelled=True)
    [parsed] = Calendar.from_ical(calendar(None, [event], name="Appointments of Pat")).walk("VEVENT")
    assert "ORGANIZER" not in parsed and "ATTENDEE" not in parsed
    assert (str(parsed["SUMMARY"]), parsed["STATUS"]) == ("Appointment: Pat with Dr A", "CANCELLED")


@pytest.mark.parametrize(("line", "physical"), [
    ("x" * 75, ["x" * 75]),  # exactly 75 octets: left whole
    ("x" * 76, ["x" * 75, " x"]),
    ("x" * 74 + "é", ["x" * 74, " é"]),  # é (2 octets) would end at octet 76: it moves to the next line
    ("x" * 73 + "é", ["x" * 73 + "é"]),
    ("é" * 100, ["é" * 37, " " + "é" * 37, " " + "é" * 26]),
    ("x" * 75 + "y" * 74 + "z", ["x" * 75, " " + "y" * 74, " z"]),  # continuations: the space and 74 octets
])
def test_folding_keeps_lines_within_75_octets_and_characters_whole(line: str, physical: list[str]) -> None:
    assert ical.fold(line).decode().split("\r\n") == physical


def test_any_year_is_written_with_four_digits() -> None:
    assert ical.utc(datetime(5, 1, 2, 3, 4, 5)) == "00050102T030405Z"
    assert ical.utc(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)) == "99991231T235959Z"


def test_values_are_escaped_as_the_rfcs_say() -> None:
    assert ical.text("a,b;c\\d\ne\r\nf") == "a\\,b\\;c\\\\d\\ne\\nf"  # RFC 5545 §3.3.11
    assert ical.param('say "hi"^\nthere; ok, : fine') == '"say ^\'hi^\'^^^nthere; ok, : fine"'  # RFC 6868
