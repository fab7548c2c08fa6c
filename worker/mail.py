"""Sending email: through SMTP when SMTP_URL is set, to the log otherwise."""

from __future__ import annotations

import asyncio
import logging
import smtplib
from email.message import EmailMessage, Message
from urllib.parse import unquote, urlsplit

from service.core.calendars import plain_text
from service.core.settings import Settings

log = logging.getLogger("worker.mail")


def _send(settings: Settings, messages: list[Message]) -> list[Exception | None]:
    """Send each message over one connection; what went wrong with each (None: sent). A connection that cannot be
    made, or is lost, fails every message not yet sent."""
    url = urlsplit(settings.smtp_url)
    smtp_class = smtplib.SMTP_SSL if url.scheme == "smtps" else smtplib.SMTP
    outcomes: list[Exception | None] = []
    try:
        with smtp_class(url.hostname or "localhost", url.port or (465 if url.scheme == "smtps" else 25),
                        timeout=10) as smtp:
            if url.username:
                smtp.login(unquote(url.username), unquote(url.password or ""))
            for message in messages:
                try:
                    smtp.send_message(message)
                    outcomes.append(None)
                except (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError, smtplib.SMTPSenderRefused) as exc:
                    outcomes.append(exc)  # this message only; the connection goes on
    except (OSError, smtplib.SMTPException) as exc:
        outcomes += [exc] * (len(messages) - len(outcomes))
    return outcomes


async def send_email(settings: Settings, to: str, subject: str, body: str) -> None:
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    await send_message(settings, message)


async def send_message(settings: Settings, message: Message) -> None:
    """Send one built message (raises if the SMTP server refuses it or is out of reach)."""
    if not settings.smtp_url:
        log.info("SMTP_URL is not set; this email goes to the log instead:\n%s", message)
        return
    [outcome] = await asyncio.to_thread(_send, settings, [message])
    if outcome is not None:
        raise outcome


async def send_messages(settings: Settings, messages: list[Message]) -> list[Exception | None]:
    """Send several built messages over one connection; what went wrong with each (None: sent). Without SMTP_URL,
    each is a line in the log (recipient, subject and text: not the attachments)."""
    if not messages:
        return []
    if not settings.smtp_url:
        for message in messages:
            log.info("SMTP_URL is not set; this email goes to the log instead: To: %s; Subject: %s\n%s",
                     message["To"], message["Subject"], plain_text(message))
        return [None] * len(messages)
    return await asyncio.to_thread(_send, settings, messages)
