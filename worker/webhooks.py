"""Sending a webhook: a signed JSON POST with short timeouts, to a checked address only.

The address check happens here, at delivery time, not only at registration: the name is resolved, every address
it resolves to is checked (core/webhooks.refused_address), and the connection goes to a checked address (aiohttp
connects to what the resolver returned), so a name that resolves to a private address later (DNS rebinding) is
refused too. Redirects are not followed (a redirect could lead anywhere).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from service.core.db import Row
from service.core.errors import InvalidInput
from service.core.settings import Settings
from service.core.webhooks import body_of, check_url, refused_address, sign

USER_AGENT = "doctor-appointments-webhooks/1"


class DeliveryError(Exception):
    """An attempt that did not succeed: a non-2xx answer (`status`), a timeout, a refused or unreachable address."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RefusedAddress(OSError):
    """The name resolves to no address a webhook may be sent to."""


class CheckedResolver(AbstractResolver):
    """aiohttp's resolver, keeping only the addresses a webhook may be sent to."""

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private
        self.inner = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        allowed = [r for r in results if refused_address(ipaddress.ip_address(r["host"]), self.allow_private) is None]
        if not allowed:
            why = refused_address(ipaddress.ip_address(results[0]["host"]), self.allow_private) if results else None
            raise RefusedAddress(f"refused: {host} resolves to no address a webhook may reach ({why})")
        return allowed

    async def close(self) -> None:
        await self.inner.close()


class WebhookSender:
    """One HTTP client per worker process, for every webhook it delivers."""

    def __init__(self, settings: Settings) -> None:
        self.allow_private = settings.webhook_allow_private_networks
        connect, read = settings.webhook_connect_timeout_seconds, settings.webhook_read_timeout_seconds
        self.session = aiohttp.ClientSession(
            # No DNS cache: every delivery resolves (and checks) the name again.
            connector=aiohttp.TCPConnector(resolver=CheckedResolver(self.allow_private), use_dns_cache=False,
                                           limit=100),
            timeout=aiohttp.ClientTimeout(total=connect + read, connect=connect, sock_connect=connect, sock_read=read),
            auto_decompress=False,
        )

    async def close(self) -> None:
        await self.session.close()

    async def send(self, delivery: Row) -> int:
        """POST the delivery's event to its endpoint; the response code if 2xx, else DeliveryError."""
        try:
            check_url(delivery["url"], self.allow_private)  # an address in the URL itself is never resolved
        except InvalidInput as exc:
            raise DeliveryError(exc.detail) from None
        body = body_of(delivery)
        timestamp = int(time.time())
        headers: dict[str, Any] = {
            "content-type": "application/json", "user-agent": USER_AGENT,
            "webhook-id": delivery["public_id"], "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(delivery["secret"], delivery["public_id"], timestamp, body),
        }
        try:
            async with self.session.post(delivery["url"], data=body, headers=headers, allow_redirects=False) as reply:
                status = reply.status
        except TimeoutError:
            raise DeliveryError("timed out") from None
        except (aiohttp.ClientError, OSError) as exc:
            if isinstance(exc.__cause__, RefusedAddress):  # aiohttp wraps the resolver's error, dropping its words
                raise DeliveryError(str(exc.__cause__)) from None
            raise DeliveryError(f"{type(exc).__name__}: {exc}"[:500]) from None
        if not 200 <= status < 300:
            raise DeliveryError(f"answered {status}", status)
        return status
