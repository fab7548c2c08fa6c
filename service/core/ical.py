"""Writing iCalendar (RFC 5545): the values and lines of the few properties our invites and feeds carry.

Written here rather than with the `icalendar` library, which the tests use instead to read back everything written
here (tests/test_ical.py, and every invite and feed the other tests receive): its generic serializer took 0.3 ms for
a booking's invite, a quarter of the worker's CPU a booking (py-spy), and 0.19 s for a full feed, for some fifteen
fixed lines an event. This takes a twentieth of that.
"""

from __future__ import annotations

from datetime import datetime

FOLD_AT = 75  # octets a line at most, the line break excluded (RFC 5545 §3.1)
# Control characters, which neither a TEXT nor a parameter value may hold (line breaks are escaped before; TAB may
# stay): dropped.
_CONTROLS = dict.fromkeys([*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F])


def _printable(value: str) -> str:
    """Without control characters (isprintable is the quick test: it is false for a few printable ones too)."""
    return value if value.isprintable() else value.translate(_CONTROLS)


def _one_line(value: str, line_break: str) -> str:
    return value.replace("\r\n", line_break).replace("\r", line_break).replace("\n", line_break)


def text(value: str) -> str:
    """A TEXT value (§3.3.11): backslash, semicolon and comma escaped, a line break written as \\n."""
    escaped = value.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,")
    return _printable(_one_line(escaped, "\\n"))


def param(value: str) -> str:
    """A parameter value (§3.2), quoted, with RFC 6868's escapes for what a quoted value cannot hold as it is: a
    double quote (^'), a line break (^n), and so the caret itself (^^)."""
    escaped = _one_line(value.replace("^", "^^"), "^n").replace('"', "^'")
    return f'"{_printable(escaped)}"'


def utc(moment: datetime) -> str:
    """A DATE-TIME in UTC (§3.3.5, form 2) of a moment in UTC: 20300115T090000Z (four digits for any year)."""
    return (f"{moment.year:04d}{moment.month:02d}{moment.day:02d}"
            f"T{moment.hour:02d}{moment.minute:02d}{moment.second:02d}Z")


def fold(line: str) -> bytes:
    """A content line as octets, folded (§3.1): at most 75 octets a line, a character's UTF-8 octets never split
    across two; each continuation begins with a space."""
    octets = line.encode()
    if len(octets) <= FOLD_AT:
        return octets
    pieces, start, room = [], 0, FOLD_AT
    while len(octets) - start > room:
        end = start + room
        while octets[end] & 0xC0 == 0x80:  # a continuation octet: cut before its character
            end -= 1
        pieces.append(octets[start:end])
        start, room = end, FOLD_AT - 1  # the leading space takes one
    pieces.append(octets[start:])
    return b"\r\n ".join(pieces)


def document(lines: list[str]) -> bytes:
    """Content lines as an iCalendar object: each folded, each ended by CRLF."""
    return b"".join(fold(line) + b"\r\n" for line in lines)
