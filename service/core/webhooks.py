"""Webhook endpoints: registered by a doctor (their own appointments) or staff (every appointment), signed per the
Standard Webhooks convention, and kept off private networks.

Signing (https://www.standardwebhooks.com): the secret is `whsec_` + base64 of 24 random bytes; the HMAC key is
those bytes. Each POST carries `webhook-id` (the event's id), `webhook-timestamp` (Unix seconds) and
`webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from typing import Any
from urllib.parse import urlsplit

import msgspec

from service.core.accounts import CurrentUser
from service.core.db import Database, Row
from service.core.errors import Forbidden, InvalidInput, NotFound
from service.core.outbox import WEBHOOK_EVENTS, rfc3339
from service.core.times import utcnow

SECRET_PREFIX = "whsec_"
MAX_URL = 2000
MAX_WEBHOOKS_PER_OWNER = 20
# Cloud metadata services (AWS, GCP, Azure, ECS, Alibaba): refused even when private networks are allowed.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200"))

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def sees_every_appointment(user: CurrentUser) -> bool:
    """Staff register webhooks for every appointment; the one place that says so."""
    return user.role == "Staff"


def may_register(user: CurrentUser) -> None:
    if not (sees_every_appointment(user) or user.role == "Doctor"):
        raise Forbidden("Only a doctor (for their own appointments) or staff may register webhooks")


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header's value for this message."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def body_of(delivery: Row) -> bytes:
    """The JSON a webhook receives: the event's id, type, time, and its data (the appointment or booking request)."""
    return msgspec.json.encode({"id": delivery["public_id"], "type": delivery["type"],
                                "timestamp": rfc3339(delivery["event_created_at"]), "data": delivery["data"]})


def refused_address(address: IPAddress, allow_private: bool) -> str | None:
    """Why a webhook may not be sent to this address (None: it may): loopback, private, link-local, metadata and
    other non-public addresses, unless `allow_private` (WEBHOOK_ALLOW_PRIVATE_NETWORKS, for development); metadata
    services and non-unicast addresses always."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_multicast or address.is_unspecified:
        return f"{address} is not a unicast address"
    if address in METADATA_ADDRESSES:
        return f"{address} is a cloud metadata service"
    if allow_private:
        return None
    if not address.is_global:
        return f"{address} is a loopback, private, link-local or otherwise non-public address"
    return None


def check_url(url: str, allow_private: bool) -> str:
    """An http(s) URL with a host, without credentials; a host written as an address must be a public one."""
    if len(url) > MAX_URL:
        raise InvalidInput(f"at most {MAX_URL} characters", field="url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidInput("not a valid URL", field="url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput("must be an http or https URL with a host", field="url")
    if parts.username or parts.password:
        raise InvalidInput("must not carry a user name or password", field="url")
    if port == 0:
        raise InvalidInput("not a valid port", field="url")
    try:
        literal: IPAddress | None = ipaddress.ip_address(parts.hostname)
    except ValueError:
        literal = None
    if literal is not None and (why := refused_address(literal, allow_private)):
        raise InvalidInput(f"refused: {why}", field="url")
    return url


def check_events(events: list[str]) -> list[str]:
    wanted = sorted(set(events))
    unknown = [e for e in wanted if e != "*" and e not in WEBHOOK_EVENTS]
    if not wanted or unknown:
        raise InvalidInput(f"name events among {', '.join(WEBHOOK_EVENTS)}, or \"*\" for all"
                           + (f"; unknown: {', '.join(unknown)}" if unknown else ""), field="events")
    return ["*"] if "*" in wanted else wanted


async def create(db: Database, user: CurrentUser, url: str, events: list[str], allow_private: bool) -> Row:
    """Register an endpoint; the answer is the only place its secret is ever shown."""
    may_register(user)
    url = check_url(url, allow_private)
    events = check_events(events)
    if await db.fetch_value("count_webhooks_of_owner", {"owner_id": user.id}) >= MAX_WEBHOOKS_PER_OWNER:
        raise InvalidInput(f"at most {MAX_WEBHOOKS_PER_OWNER} webhooks each; delete one first", field="url")
    row: dict[str, Any] = {"owner_id": user.id, "scope": "all" if sees_every_appointment(user) else "own",
                           "url": url, "events": ",".join(events), "secret": new_secret(), "now": utcnow()}
    _, webhook_id = await db.execute("insert_webhook", row)
    return {**row, "id": webhook_id, "events": events, "created_at": row["now"], "disabled_at": None,
            "disabled_reason": None}


def shown(row: Row) -> Row:
    """A stored endpoint as answered: its events as a list."""
    return {**row, "events": row["events"].split(",")}


async def list_own(db: Database, user: CurrentUser) -> list[Row]:
    may_register(user)
    return [shown(row) for row in await db.fetch_all("list_webhooks_of_owner", {"owner_id": user.id})]


async def find_own(db: Database, user: CurrentUser, webhook_id: int) -> Row:
    row = await db.fetch_one("find_webhook", {"id": webhook_id})
    if row is None or row["owner_id"] != user.id:
        raise NotFound(f"no webhook {webhook_id} of yours")
    return shown(row)


async def delete(db: Database, user: CurrentUser, webhook_id: int) -> None:
    """Remove an endpoint and its deliveries (pending ones are not sent)."""
    deleted, _ = await db.execute("delete_webhook", {"id": webhook_id, "owner_id": user.id})
    if not deleted:
        raise NotFound(f"no webhook {webhook_id} of yours")


async def deliveries(db: Database, user: CurrentUser, webhook_id: int, limit: int, offset: int) -> list[Row]:
    """An endpoint's deliveries, newest first: status, attempts, last response code, next retry."""
    await find_own(db, user, webhook_id)
    return await db.fetch_all("list_webhook_deliveries", {"webhook_id": webhook_id, "limit": limit,
                                                          "offset": offset})
