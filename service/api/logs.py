"""The API process's logging, set up here once: each request's id, and every line (uvicorn's too) in one format.

The id is the request's sane `X-Request-ID` or a new one (core/logs.py), set before anything of the request runs,
so every line logged for it carries it, and sent back in the response's `X-Request-ID`.
"""

from __future__ import annotations

import copy
import logging
import re

from litestar.datastructures import MutableScopeHeaders
from litestar.logging import LoggingConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from service.core.logs import FILTERS, REQUEST_ID_HEADER, current_request_id, formatter, request_id_from
from service.core.settings import Settings

HEADER_KEY = REQUEST_ID_HEADER.lower().encode()


def logging_config(settings: Settings) -> LoggingConfig:
    """Litestar's logging (its queue handler: lines are written off the event loop) in our format, with the
    request id on every record."""
    # Litestar's own handlers, which differ by Python version (a copy: they are its module's dicts, shared).
    handlers = copy.deepcopy(LoggingConfig().handlers)
    for handler in handlers.values():
        if "formatter" in handler:
            handler["formatter"] = "service"
    handlers["queue_listener"]["filters"] = ["request_id"]
    return LoggingConfig(
        formatters={"service": formatter(settings.json_logs)},
        filters=FILTERS,
        handlers=handlers,
        root={"level": "INFO", "handlers": ["queue_listener"]},
        log_exceptions="never",  # the 500 handler logs what is unexpected, once
    )


def log_uvicorn_through_ours(access_log: bool) -> None:
    """uvicorn's lines (startup, errors, access) through the root's handler, in the same format with the request
    id. Their levels stay as uvicorn's --log-level set them; ACCESS_LOG=false drops the access lines, which cost
    real time on the booking path."""
    for name in ("uvicorn", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = not access_log
    logging.getLogger("uvicorn.access").addFilter(hide_feed_tokens)
    logging.getLogger("service.access").disabled = not access_log  # the line per booking stored


FEED_TOKEN = re.compile(r"(/calendar-feeds/)[^/?#\s]+(\.ics)")


def hide_feed_tokens(record: logging.LogRecord) -> bool:
    """A calendar feed's URL is its secret: uvicorn's access line (client, method, path, version, status) shows it
    as /calendar-feeds/***.ics."""
    if isinstance(record.args, tuple) and len(record.args) > 2 and isinstance(record.args[2], str):
        record.args = (*record.args[:2], FEED_TOKEN.sub(r"\1***\2", record.args[2]), *record.args[3:])
    return True


class RequestIds:
    """ASGI middleware around the whole app: the request's id, before routing (so 404s and 405s have one too)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = next((value for key, value in scope["headers"] if key == HEADER_KEY), None)
        request_id = request_id_from(sent.decode("latin-1") if sent is not None else None)
        # Each request runs in a task of its own, so this is the request's alone and needs no reset.
        current_request_id.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                MutableScopeHeaders.from_message(message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)
