"""Calendar feeds: a secret URL per feed that calendar programs poll without a token (they cannot send one).

The token is 256 random bits, shown once; only its SHA-256 is stored, and a feed is found by that hash through a
unique index, so an unknown token costs what a known one does (no comparison that stops at the first differing
character). Deleting a feed revokes its URL at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from datetime import timedelta

from service.core.accounts import CurrentUser
from service.core.calendars import calendar, vevent
from service.core.db import Database, Row
from service.core.errors import InvalidInput, NotFound
from service.core.outbox import sequence_at
from service.core.times import utcnow

PATH = "/calendar-feeds"
SUFFIX = ".ics"
HISTORY = timedelta(days=30)  # a feed shows appointments from this long ago on
MAX_EVENTS = 1000  # a bound on the work of one read
MAX_FEEDS_PER_USER = 10
# Shown as cancelled in a feed (others, active or done, as confirmed).
CANCELLED_STATUSES = ("cancelled", "rescheduled")


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def create(db: Database, user: CurrentUser) -> Row:
    """A new feed of the user's appointments; its URL (holding the token) is shown only in this answer."""
    if await db.fetch_value("count_calendar_feeds_of_user", {"user_id": user.id}) >= MAX_FEEDS_PER_USER:
        raise InvalidInput(f"at most {MAX_FEEDS_PER_USER} calendar feeds each; delete one first")
    token = secrets.token_urlsafe(32)
    now = utcnow()
    _, feed_id = await db.execute("insert_calendar_feed", {"user_id": user.id, "token_hash": token_hash(token),
                                                           "now": now})
    return {"id": feed_id, "url": f"{PATH}/{token}{SUFFIX}", "created_at": now}


async def list_own(db: Database, user: CurrentUser) -> list[Row]:
    return await db.fetch_all("list_calendar_feeds_of_user", {"user_id": user.id})


async def delete(db: Database, user: CurrentUser, feed_id: int) -> None:
    deleted, _ = await db.execute("delete_calendar_feed", {"id": feed_id, "user_id": user.id})
    if not deleted:
        raise NotFound(f"no calendar feed {feed_id} of yours")


async def render(db: Database, name: str) -> bytes:
    """The iCalendar text of the feed whose URL ends in `name` ("{token}.ics"); NotFound for any other name."""
    token = name.removesuffix(SUFFIX)
    # The lookup runs whatever the name looks like, so a malformed name answers in the time an unknown one does.
    feed = await db.fetch_one("find_calendar_feed", {"token_hash": token_hash(token)})
    if feed is None or not name.endswith(SUFFIX):
        raise NotFound("no such calendar feed")
    now = utcnow()
    doctor = feed["role"] == "Doctor"
    rows = await db.fetch_all("list_appointments_for_user", {
        "doctor_id": feed["user_id"] if doctor else None, "patient_id": None if doctor else feed["user_id"],
        "status": None, "from": now - HISTORY, "to": None, "limit": MAX_EVENTS, "offset": 0})
    # Off the event loop: a full feed is ~15 ms of CPU, which would hold up every other request of the process
    # meanwhile; in a thread, they take turns with it.
    return await asyncio.to_thread(feed_text, rows, f"Appointments of {feed['name']}")


def feed_text(rows: list[Row], name: str) -> bytes:
    events = []
    for row in rows:
        cancelled = row["status"] in CANCELLED_STATUSES
        changed = (row["status_changed_at"] or row["cancelled_at"]) if cancelled else None
        # DTSTAMP is the last change, not now: an unchanged feed reads the same, byte for byte (its ETag too).
        events.append(vevent(row, {"name": row["doctor_name"]}, {"name": row["patient_name"]},
                             sequence_at(changed) if changed else 0, changed or row["created_at"], cancelled))
    return calendar(None, events, name=name)
