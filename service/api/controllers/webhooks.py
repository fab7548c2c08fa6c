"""Webhooks: endpoints that receive the appointment events, signed (Standard Webhooks)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from litestar import Controller, delete, get, post
from litestar.params import Body
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT
from msgspec import Meta

from service.api.dependencies import DatabaseDep, SettingsDep, UserDep
from service.api.params import Id, Limit, Offset
from service.api.problems import problem_responses
from service.core import webhooks
from service.core.times import from_row

# outbox.WEBHOOK_EVENTS and "*", spelled out for the OpenAPI enum (tests/test_notifications.py keeps them in step).
EventName = Literal["*", "appointment.confirmed", "appointment.cancelled", "appointment.rescheduled",
                    "appointment.status_changed", "booking.rejected", "waitlist.offered"]


class WebhookIn(msgspec.Struct, forbid_unknown_fields=True):
    example: ClassVar[dict[str, Any]] = {"url": "https://crm.clinic.example/hooks/appointments",
                                         "events": ["appointment.confirmed", "appointment.cancelled"]}

    url: Annotated[str, Meta(min_length=1, max_length=webhooks.MAX_URL)]
    events: Annotated[list[EventName], Meta(min_length=1, max_length=10)]


class WebhookOut(msgspec.Struct):
    example: ClassVar[dict[str, Any]] = {
        "id": 4, "url": "https://crm.clinic.example/hooks/appointments", "events": ["appointment.confirmed"],
        "scope": "own", "created_at": "2030-01-14T09:00:00Z", "disabled_at": None, "disabled_reason": None}

    id: int
    url: str
    events: list[str]
    scope: str
    created_at: datetime
    disabled_at: datetime | None
    disabled_reason: str | None


class WebhookCreated(WebhookOut):
    example: ClassVar[dict[str, Any]] = {**WebhookOut.example, "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}

    secret: str


class DeliveryOut(msgspec.Struct):
    example: ClassVar[dict[str, Any]] = {
        "id": 81, "event_id": "evt_5f0c9d1e2b3a4c5d6e7f8091a2b3c4d5", "event_type": "appointment.confirmed",
        "status": "pending", "attempts": 2, "last_response_code": 503, "last_error": "answered 503",
        "created_at": "2030-01-14T09:00:00Z", "delivered_at": None, "next_attempt_at": "2030-01-14T09:00:35Z"}

    id: int
    event_id: str
    event_type: str
    status: str
    attempts: int
    last_response_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    next_attempt_at: datetime | None


class WebhookController(Controller):
    path = "/webhooks"
    tags = ["notifications"]

    @post("/", status_code=HTTP_201_CREATED, operation_id="createWebhook", summary="Register a webhook endpoint",
          description=(
              "A doctor's endpoint receives the events of their own appointments; a staff member's, every "
              "appointment's. `events` names the event types, or `[\"*\"]` for all. The answer holds the signing "
              "secret: it is shown this once. Each delivery is a JSON POST signed per Standard Webhooks "
              "(`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`), retried with "
              "backoff for about a day; an endpoint whose delivery fails for good is disabled. Only http(s) URLs "
              "that resolve to public addresses are sent to."),
          responses=problem_responses(400, 401, 403, 413, 415, 503))
    async def create(self, data: Annotated[WebhookIn, Body()], user: UserDep, db: DatabaseDep,
                     settings: SettingsDep) -> WebhookCreated:
        row = await webhooks.create(db, user, data.url, list(data.events), settings.webhook_allow_private_networks)
        return from_row(WebhookCreated, row)

    @get("/", operation_id="listWebhooks", summary="Your webhook endpoints (a disabled one says why)",
         responses=problem_responses(401, 403, 503))
    async def list_own(self, user: UserDep, db: DatabaseDep) -> list[WebhookOut]:
        return [from_row(WebhookOut, row) for row in await webhooks.list_own(db, user)]

    @delete("/{webhook_id:int}", status_code=HTTP_204_NO_CONTENT, operation_id="deleteWebhook",
            summary="Remove a webhook endpoint and its deliveries", responses=problem_responses(400, 401, 404, 503))
    async def remove(self, webhook_id: Id, user: UserDep, db: DatabaseDep) -> None:
        await webhooks.delete(db, user, webhook_id)

    @get("/{webhook_id:int}/deliveries", operation_id="listWebhookDeliveries",
         summary="An endpoint's deliveries, newest first: status, attempts, last response code, next retry",
         responses=problem_responses(400, 401, 404, 503))
    async def deliveries(self, webhook_id: Id, user: UserDep, db: DatabaseDep, limit: Limit = 50,
                         offset: Offset = 0) -> list[DeliveryOut]:
        rows = await webhooks.deliveries(db, user, webhook_id, limit, offset)
        return [from_row(DeliveryOut, row) for row in rows]
