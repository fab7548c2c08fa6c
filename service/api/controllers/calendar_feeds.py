"""Calendar feeds: secret iCalendar URLs of a user's appointments, for calendar programs."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated, Any, ClassVar

import msgspec
from litestar import Controller, Response, delete, get, post
from litestar.openapi import ResponseSpec
from litestar.params import HeaderParameter, Parameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT, HTTP_304_NOT_MODIFIED

from service.api.dependencies import DatabaseDep, UserDep
from service.api.params import Id
from service.api.problems import problem_responses
from service.api.security import PUBLIC
from service.core import feeds
from service.core.times import from_row

CALENDAR = "text/calendar; charset=utf-8"


class FeedCreated(msgspec.Struct):
    example: ClassVar[dict[str, Any]] = {
        "id": 2, "url": "/calendar-feeds/pN3q0kXz8c1S1cQ2w4u9dJ7yH6tF5rE3aB0vM2nL4kI.ics",
        "created_at": "2030-01-14T09:00:00Z"}

    id: int
    url: str
    created_at: datetime


class FeedOut(msgspec.Struct):
    example: ClassVar[dict[str, Any]] = {"id": 2, "created_at": "2030-01-14T09:00:00Z"}

    id: int
    created_at: datetime


class CalendarFeedController(Controller):
    path = feeds.PATH
    tags = ["notifications"]

    @post("/", status_code=HTTP_201_CREATED, operation_id="createCalendarFeed",
          summary="A secret calendar URL of your appointments",
          description=("The `url` (relative to this API) serves your appointments from 30 days ago on as iCalendar, "
                       "without a token, for a calendar program to subscribe to. Keep it secret: it is shown only "
                       "here. Delete the feed to revoke it."),
          responses=problem_responses(400, 401, 503))
    async def create(self, user: UserDep, db: DatabaseDep) -> FeedCreated:
        return from_row(FeedCreated, await feeds.create(db, user))

    @get("/", operation_id="listCalendarFeeds", summary="Your calendar feeds (their URLs are not shown again)",
         responses=problem_responses(401, 503))
    async def list_own(self, user: UserDep, db: DatabaseDep) -> list[FeedOut]:
        return [from_row(FeedOut, row) for row in await feeds.list_own(db, user)]

    @delete("/{feed_id:int}", status_code=HTTP_204_NO_CONTENT, operation_id="deleteCalendarFeed",
            summary="Revoke a calendar feed: its URL answers 404 from now on",
            responses=problem_responses(400, 401, 404, 503))
    async def remove(self, feed_id: Id, user: UserDep, db: DatabaseDep) -> None:
        await feeds.delete(db, user, feed_id)

    @get("/{name:str}", **PUBLIC, operation_id="readCalendarFeed", media_type=CALENDAR,
         summary="A calendar feed (iCalendar, UTC); no token: the URL is the secret",
         description=("Appointments from 30 days ago on (at most 1,000), cancelled ones as `STATUS:CANCELLED`. "
                      "Send the `ETag` back in `If-None-Match` to get a 304 when nothing changed."),
         responses={200: ResponseSpec(str, description="The feed", media_type=CALENDAR),
                    304: ResponseSpec(None, description="Unchanged since the ETag sent"),
                    **problem_responses(400, 404, 503)})
    async def read(
        self, db: DatabaseDep,
        name: Annotated[str, Parameter(max_length=100, description="`{token}.ics`, as the feed's url says")],
        if_none_match: Annotated[str | None, HeaderParameter(name="If-None-Match", max_length=1000)] = None,
    ) -> Response[bytes]:
        body = await feeds.render(db, name)
        etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
        headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
        if if_none_match and etag in (tag.strip().removeprefix("W/") for tag in if_none_match.split(",")):
            return Response(b"", status_code=HTTP_304_NOT_MODIFIED, headers=headers)
        return Response(body, media_type=CALENDAR, headers=headers)
