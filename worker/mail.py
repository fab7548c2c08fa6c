"""Sending email: through SMTP when SMTP_URL is set, to the log otherwise."""

from __future__ import annotations

import asyncio
import logging
import smtplib
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

from service.core.settings import Settings

log = logging.getLogger("worker.mail")


def _send(settings: Settings, message: EmailMessage) -> None:
    url = urlsplit(settings.smtp_url)
    smtp_class = smtplib.SMTP_SSL if url.scheme == "smtps" else smtplib.SMTP
    with smtp_class(url.hostname or "localhost", url.port or (465 if url.scheme == "smtps" else 25),
                    timeout=10) as smtp:
        if url.username:
            smtp.login(unquote(url.username), unquote(url.password or ""))
        smtp.send_message(message)


async def send_email(settings: Settings, to: str, subject: str, body: str) -> None:
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    await send_message(settings, message)


async def send_message(settings: Settings, message: EmailMessage) -> None:
    """Send a built message (raises if the SMTP server refuses it or is out of reach)."""
    if not settings.smtp_url:
        log.info("SMTP_URL is not set; this email goes to the log instead:\n%s", message)
        return
    await asyncio.to_thread(_send, settings, message)
